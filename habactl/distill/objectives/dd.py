"""Dataset distillation by unrolled training (DD, Wang et al. 2018; docs/method.md).

Each iteration draws a network afresh (DD's "unknown init"), trains it ``inner_steps``
SGD steps on the synthetic set (its decoded images) with *learned* per-step learning
rates, and scores the trained network by its cross-entropy on a batch of real images.
That loss is differentiated through the unrolled steps (second order) into the stored
tensors and the learning rates. Step t uses rate α_t = softplus(ρ_t), so a rate stays
positive whatever its gradient does; the archive records their mean as
``training.learned_lr`` (``record_lr``).

Learnable labels (``learn_labels``, the soft-label variant of Sucholutsky & Schonlau
2021 and Bohdal et al. 2020): each basis gets a learned label, logits ℓ whose softmax is
the target of the inner steps' cross-entropy; they learn with the images. Labels are per
basis, so every hallucination of a basis inherits its basis' label (the format's labels
are per basis, and per decoded image they would cost ``expansion`` times the bytes). The
archive stores softmax(ℓ) as soft labels (``labels.kind = "soft"``), which the budget
counts: the planner reserves ``classes`` float32 values per basis
(``label_values_per_basis``) before it buys bases.

Memory: the student is one flat parameter vector (``habactl.experts.FlatNet``); the
unrolled steps are differentiated by ``habactl.distill.unroll`` (``unroll: recompute``
keeps one step's graph at a time, whatever ``inner_steps``).

Under torchrun (N ranks) every rank draws a network and a real batch of its own each
iteration (``draws_per_rank``), and the stored tensors step along the mean of the N
gradients: N networks per iteration, as the reference's ``sample_n_nets``. An archive of
N ranks is therefore not the archive of one; its provenance records the world size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, Objective, setting
from habactl.distill.sets import SyntheticSet
from habactl.distill.unroll import UNROLLS, unrolled_loss
from habactl.nets import seeded as networks
from habactl.nets.registry import arch_name
from habactl.runtime.device import to_device

VARIANTS = ("one-per-step", "all")


def _inverse_softplus(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float64).expm1().log())


class DatasetDistillation(Objective):
    name = "dd"
    summary = "unrolled training on the synthetic set (DD), optionally with learned labels"
    draws_per_rank: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Settings:
        # SGD steps of the network on the synthetic set per iteration (reference: 10
        # steps x 3 epochs = 30)
        inner_steps: int = setting(10, "--inner-steps")
        batch_syn: int = setting(0, "--batch-syn")  # items per step; 0 = all
        # real images per class the trained network is scored on (reference: 1,024 in all)
        real_per_class: int = setting(16, "--real-per-class")
        lr_init: float = setting(0.02)  # every step's initial learned lr (reference: 0.02)
        lr_lr: float = setting(0.1, "--lr-lr")  # SGD lr of the learned lrs' softplus inputs
        lr_momentum: float = setting(0.5)
        record_lr: bool = setting(True)  # store the learned lrs' mean as training.learned_lr
        learn_labels: bool = setting(False, "--learn-labels")
        label_init: float = setting(0.9)  # a learned label's initial weight of its own class
        lr_labels: float = setting(1.0)  # SGD lr of the label logits
        variants: str = setting("one-per-step")
        unroll: str = setting("recompute", "--unroll")
        net_arch: str = setting("convnet")
        net_width: float = setting(1.0)

    engine_defaults = {"lr_bases": 100.0, "momentum": 0.5, "augment": "none"}

    @classmethod
    def label_values_per_basis(cls, settings: Mapping[str, Any], num_classes: int) -> int:
        learn = settings.get("learn_labels", cls.defaults["learn_labels"])
        return num_classes if learn is True else 0

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(context, settings)
        s = self.draft()
        for key in ("inner_steps", "batch_syn", "real_per_class"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise DistillError(f"dd: {key} must be an integer, got {s[key]!r}")
        if s["inner_steps"] < 1 or s["batch_syn"] < 0:
            raise DistillError("dd: inner_steps must be >= 1 and batch_syn >= 0")
        for key in ("learn_labels", "record_lr"):
            if not isinstance(s[key], bool):
                raise DistillError(f"dd: {key} must be true or false, got {s[key]!r}")
        for key, allowed in (("unroll", UNROLLS), ("variants", VARIANTS)):
            if s[key] not in allowed:
                raise DistillError(f"dd: {key} must be one of {', '.join(allowed)}, got {s[key]!r}")
        for key in ("lr_init", "lr_lr", "lr_momentum", "label_init", "lr_labels", "net_width"):
            s[key] = float(s[key])
        if not (s["lr_init"] > 0 and s["lr_lr"] >= 0 and s["lr_momentum"] >= 0):
            raise DistillError("dd: lr_init must be positive, lr_lr and lr_momentum >= 0")
        if not (0 < s["label_init"] < 1 and s["lr_labels"] >= 0):
            raise DistillError("dd: label_init must lie strictly between 0 and 1, lr_labels >= 0")
        if not s["net_width"] > 0:
            raise DistillError(f"dd: net_width must be positive, got {s['net_width']}")
        context.real.check_per_class(s["real_per_class"])
        s["net_arch"] = arch_name(s["net_arch"], *context.image_shape[1:])  # as recorded
        self.settings = self.Settings(**s)
        self.net = networks.build(
            s["net_arch"],
            context.image_shape,
            context.num_classes,
            width_mult=s["net_width"],
            device=context.device,
            generator=torch.Generator().manual_seed(0),  # redrawn every iteration
            trainable=False,
        )
        from habactl.experts import FlatNet

        self.flat = FlatNet(self.net)
        device = context.device
        raw = _inverse_softplus(s["lr_init"])
        self.raw_lrs = nn.Parameter(torch.full((s["inner_steps"],), raw, device=device))
        self.label_logits: nn.Parameter | None = None
        if s["learn_labels"]:
            self.label_logits = nn.Parameter(self._initial_label_logits().to(device))

    # -- learned labels -----------------------------------------------------------------
    def _initial_label_logits(self) -> Tensor:
        """Logits whose softmax gives each basis' own class ``label_init`` and the other
        classes an equal share of the rest."""
        per_class = self.context.per_class
        if per_class is None:
            raise DistillError("internal: learned labels need the plan's bases per class")
        classes = self.context.num_classes
        own = self.settings.label_init
        other = (1.0 - own) / max(classes - 1, 1)
        hard = torch.repeat_interleave(torch.arange(len(per_class)), torch.tensor(per_class))
        probabilities = torch.full((len(hard), classes), other, dtype=torch.float32)
        probabilities[torch.arange(len(hard)), hard] = own
        return probabilities.log()

    def learned_labels(self) -> Tensor | None:
        if self.label_logits is None:
            return None
        return self.label_logits.detach().softmax(dim=1)

    # -- the engine's hooks ---------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        s = self.settings
        groups: list[dict[str, Any]] = [
            {"params": [self.raw_lrs], "lr": s.lr_lr, "momentum": s.lr_momentum}
        ]
        if self.label_logits is not None:
            groups.append({"params": [self.label_logits], "lr": s.lr_labels})
        return groups

    def lrs(self) -> Tensor:
        return F.softplus(self.raw_lrs)

    def learned_lr(self) -> float | None:
        if not self.settings.record_lr:
            return None
        return float(self.lrs().detach().mean())

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"raw_lrs": self.raw_lrs.detach().cpu().clone()}
        if self.label_logits is not None:
            state["label_logits"] = self.label_logits.detach().cpu().clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.raw_lrs.copy_(state["raw_lrs"])
            if self.label_logits is not None:
                self.label_logits.copy_(state["label_logits"])

    # -- one iteration ----------------------------------------------------------------------
    def _plan(self, synthetic: SyntheticSet, generator: torch.Generator) -> list[tuple]:
        """Every step's (bases, variants, augmentation), drawn up front."""
        n, e = synthetic.bases.shape[0], synthetic.expansion
        every = self.settings.variants == "all" and e > 1
        items = n * e if every else n
        batch = self.settings.batch_syn
        augment = self.context.augment
        steps = []
        for _ in range(self.settings.inner_steps):
            chosen = (
                torch.randperm(items, generator=generator)[:batch].sort().values
                if 0 < batch < items
                else torch.arange(items)
            )
            if e == 1:
                basis, variant = chosen, None
            elif every:
                basis, variant = chosen // e, chosen % e
            else:
                basis = chosen
                variant = torch.randint(e, (1,), generator=generator).expand(len(chosen))
            steps.append((basis, variant, augment.sample(generator, batch=len(basis))))
        return steps

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float | Tensor]]:
        s = self.settings
        context = self.context
        networks.redraw(self.net, generator)  # a new initialisation every iteration
        start = torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])
        real = context.real.sample(s.real_per_class, generator)  # (classes, per, C, H, W)
        real_labels = torch.arange(real.shape[0], device=real.device)
        real_labels = real_labels.repeat_interleave(real.shape[1])
        real = real.flatten(0, 1)
        steps = self._plan(synthetic, generator)
        labels = self.label_logits
        augment = context.augment

        def step_gradient(t: int, theta: Tensor, graph: bool) -> Tensor:
            basis, variant, augmentation = steps[t]
            with torch.set_grad_enabled(graph):
                x = augment.apply(synthetic.decode(basis, variant), augmentation)
                if labels is None:
                    target: Tensor = synthetic.item_labels(basis)
                else:
                    target = labels[to_device(basis, labels.device)].softmax(dim=1)
            ce = F.cross_entropy(self.flat(theta, x), target)
            return torch.autograd.grad(ce, theta, create_graph=graph)[0]

        def final_loss(theta: Tensor) -> Tensor:
            return F.cross_entropy(self.flat(theta, real), real_labels)

        stored = [synthetic.bases, *synthetic.hallucinator_parameters()]
        if labels is not None:
            stored.append(labels)
        lrs = self.lrs()
        loss = unrolled_loss(start, lrs, step_gradient, final_loss, stored, s.unroll)
        # The mean lr stays on the device: the engine reads it with the loss.
        return loss, {"lr": lrs.detach().mean()}
