"""Trajectory matching (MTT, Cazenavette et al. 2022; docs/method.md).

Each iteration picks an expert of the buffer (``habactl experts``) and a start epoch
t < max_start_epoch, starts a student at θ_expert(t), takes ``syn_steps`` SGD steps on
the synthetic set with a *learned* learning rate, and minimises

    ‖θ_student − θ_expert(t+M)‖² / ‖θ_expert(t) − θ_expert(t+M)‖².

The learning rate is a parameter of its own (optimised with ``lr_lr``) and ends up in
the archive as ``training.learned_lr``, which ``HabaDataset.recommended_lr`` and
``habactl evaluate`` use. With hallucinators, each step sends its batch of bases
through one random hallucinator (the reference behaviour; ``variants: all`` sends
every basis through every one instead). Each step's batch gets DSA augmentation with
one draw per image, as in the reference.

Memory. The student is one flat parameter vector (``FlatNet``: the network's weights
are views into it, evaluated with ``torch.func.functional_call``). Differentiating
through the unrolled steps keeps, for every step, the activations of a forward, a
backward and their double backward; at 1×28×28 IPC 10 with 20 steps that is over 8 GiB.
``unroll: recompute`` (the default) keeps only the student's parameters of each step
(one vector each) and walks the steps backwards, recomputing one step's graph at a
time (reverse-mode by hand: with θ' = θ − α g(θ, x) and the adjoint a = ∂L/∂θ',
∂L/∂θ = a − α (∂g/∂θ)ᵀa, ∂L/∂x = −α (∂g/∂x)ᵀa, ∂L/∂α = −gᵀa). Peak memory is one
step's graph; the price is one more forward and backward per step.
``unroll: full`` keeps the whole graph (faster where memory is plentiful).

Under torchrun (N ranks) every rank holds the whole synthetic set and matches a
trajectory of its own each iteration: its expert, start epoch, batches and augmentation
come from a stream of its rank (``draws_per_rank``; the engine derives it from the seed,
the rank and the iteration), and the stored tensors and the learned lr step along the
mean of the N gradients. N trajectories per iteration is a larger batch of trajectories,
so an archive of N ranks is not the archive of one (docs/scaling.md); its provenance
records the world size.
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
from habactl.nets import seeded as networks
from habactl.runtime.device import to_device

UNROLLS = ("recompute", "full")
VARIANTS = ("one-per-step", "all")


class _Precomputed(torch.autograd.Function):
    """A scalar whose gradients w.r.t. ``inputs`` were computed beforehand."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, grads: tuple[Tensor, ...], *inputs: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Any, ...]:
        return (None, None, *[grad_output * g for g in ctx.grads])


class TrajectoryMatching(Objective):
    name = "mtt"
    summary = "trajectory matching (needs --experts)"
    # Under torchrun each rank samples its own trajectory; the loss is their mean.
    draws_per_rank: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Settings:
        experts: str | None = setting(
            None, "--experts", "The experts buffer (make one with habactl experts).", path=True
        )
        # (reference: 30 at IPC 10)
        syn_steps: int = setting(20, "--syn-steps", "Student steps per iteration.", min=1)
        expert_epochs: int = setting(2, "--expert-epochs", "Expert epochs to match (M).", min=1)
        max_start_epoch: int | None = setting(
            None,
            "--max-start-epoch",
            "Students start below this epoch.",
            min=1,
            unset="min(20, buffer epochs - M + 1)",
        )
        lr_init: float | None = setting(None)  # initial learned lr; None: the experts' lr
        lr_lr: float = setting(
            1e-5, "--lr-lr", "Learning rate of the learned learning rate."
        )  # SGD
        lr_momentum: float = setting(0.5)
        # floor of the learned lr (a step with lr <= 0 means nothing)
        lr_min: float = setting(1e-6)
        batch_syn: int = setting(0, "--batch-syn", "Bases per student step (0: all).", min=0)
        variants: str = setting("one-per-step")
        unroll: str = setting(
            "recompute",
            "--unroll",
            "recompute (one step's graph in memory at a time) or full.",
        )
        # largest step per iteration of the bases and of the hallucinators, each as a
        # fraction of its norm (habactl.distill.stepbound); 0: unbounded
        max_step: float = setting(0.01)  # of 1 %, 5 %: 1 % kept most accuracy
        # the same for the learned lr: kept slow, so the images (not an lr sliding to
        # lr_min, which also lowers the loss) do the matching; 0: unbounded
        lr_max_step: float = setting(0.002)

    engine_defaults = {"lr_bases": 100.0, "momentum": 0.5}

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        from habactl.experts import ExpertBuffer, FlatNet

        super().__init__(context, settings)
        s = self.draft()
        if not s["experts"]:
            raise DistillError(
                "--objective mtt needs an experts buffer: --experts DIR "
                "(make one with: habactl experts DATA -o DIR)"
            )
        s["experts"] = str(s["experts"])
        for key in ("syn_steps", "expert_epochs", "batch_syn"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise DistillError(f"mtt: {key} must be an integer, got {s[key]!r}")
        if s["syn_steps"] < 1 or s["expert_epochs"] < 1 or s["batch_syn"] < 0:
            raise DistillError("mtt: syn_steps and expert_epochs must be >= 1, batch_syn >= 0")
        if s["unroll"] not in UNROLLS:
            raise DistillError(
                f"mtt: unroll must be one of {', '.join(UNROLLS)}, got {s['unroll']!r}"
            )
        if s["variants"] not in VARIANTS:
            raise DistillError(
                f"mtt: variants must be one of {', '.join(VARIANTS)}, got {s['variants']!r}"
            )
        buffer = ExpertBuffer(s["experts"])
        dataset = getattr(context, "dataset", None)
        if dataset is not None:
            buffer.check_source(
                dataset["name"], dataset["fingerprint"], context.image_shape, context.num_classes
            )
        arch = buffer.index.arch
        self.net = networks.build(
            arch.name,
            context.image_shape,
            context.num_classes,
            width_mult=arch.width,
            device=context.device,
            generator=torch.Generator().manual_seed(0),
            trainable=False,
        )
        self.flat = FlatNet(self.net)
        buffer.check_layout(self.flat.describe())
        self.buffer = buffer
        epochs, m = buffer.epochs, s["expert_epochs"]
        if m > epochs:
            raise DistillError(
                f"mtt: expert_epochs {m} needs experts of at least {m} epochs; "
                f"the buffer has {epochs}"
            )
        if s["max_start_epoch"] is None:
            s["max_start_epoch"] = max(1, min(20, epochs - m + 1))
        if not isinstance(s["max_start_epoch"], int) or s["max_start_epoch"] < 1:
            raise DistillError(f"mtt: max_start_epoch must be >= 1, got {s['max_start_epoch']!r}")
        if s["max_start_epoch"] - 1 + m > epochs:
            raise DistillError(
                f"mtt: max_start_epoch {s['max_start_epoch']} + expert_epochs {m} "
                f"goes past the buffer's {epochs} epochs; use max_start_epoch "
                f"{epochs - m + 1} or less"
            )
        expert_lr = buffer.index.training.lr
        s["lr_init"] = float(expert_lr if s["lr_init"] is None else s["lr_init"])
        s["lr_lr"] = float(s["lr_lr"])
        s["lr_momentum"] = float(s["lr_momentum"])
        s["lr_min"] = float(s["lr_min"])
        for key in ("max_step", "lr_max_step"):
            s[key] = float(s[key])
            if not s[key] >= 0:
                raise DistillError(f"mtt: {key} must be 0 (unbounded) or more, got {s[key]}")
        if not (
            s["lr_init"] > 0
            and s["lr_lr"] >= 0
            and s["lr_momentum"] >= 0
            and 0 < s["lr_min"] <= s["lr_init"]
        ):
            raise DistillError(
                "mtt: lr_init must be positive, lr_lr and lr_momentum >= 0, 0 < lr_min <= lr_init"
            )
        self.settings = self.Settings(**s)
        self.syn_lr = nn.Parameter(torch.tensor(s["lr_init"], device=context.device))

    def hyperparameters(self) -> dict[str, Any]:
        index = self.buffer.index
        return {
            **super().hyperparameters(),
            "buffer": {
                "digest": self.buffer.digest,
                "experts": len(self.buffer),
                "epochs": self.buffer.epochs,
                "arch": index.arch.to_json(),
                "expert_lr": index.training.lr,
                "dataset": index.dataset.fingerprint,
            },
        }

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {
                "params": [self.syn_lr],
                "lr": self.settings.lr_lr,
                "momentum": self.settings.lr_momentum,
                "max_step": self.settings.lr_max_step or None,
            }
        ]

    def max_step(self) -> float | None:
        # Its gradients span orders of magnitude between iterations (see stepbound).
        return self.settings.max_step  # 0: unbounded (the lr group has its own bound)

    def learned_lr(self) -> float | None:
        value = float(self.syn_lr.detach())
        if not value > 0:
            raise DistillError(
                f"the learned learning rate became {value:g}; nothing was written; "
                f"lower lr_lr (--lr-lr)"
            )
        return value

    def after_step(self, synthetic: SyntheticSet, generator: torch.Generator) -> None:
        # The reference lets the learned lr go where its gradient takes it; a step of
        # lr_lr too large can push it through zero, after which the student climbs the
        # loss. Keeping it above a floor keeps the run (and the archive) meaningful.
        with torch.no_grad():
            self.syn_lr.clamp_(min=self.settings.lr_min)

    def state_dict(self) -> dict[str, Any]:
        return {"syn_lr": self.syn_lr.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.syn_lr.copy_(state["syn_lr"])

    # -- one iteration ----------------------------------------------------------------
    def _plan(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> list[tuple[Tensor, Any, Any]]:
        """Every step's (bases, variants, augmentation), drawn up front."""
        n, e = synthetic.bases.shape[0], synthetic.expansion
        every = self.settings.variants == "all" and e > 1
        items = n * e if every else n
        batch = self.settings.batch_syn
        augment = self.context.augment
        steps = []
        for _ in range(self.settings.syn_steps):
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

    def _images(
        self, synthetic: SyntheticSet, step: tuple[Tensor, Any, Any]
    ) -> tuple[Tensor, Tensor]:
        basis, variant, augmentation = step
        x = synthetic.decode(basis, variant)
        return self.context.augment.apply(x, augmentation), synthetic.item_labels(basis)

    def _step_gradient(self, theta: Tensor, x: Tensor, y: Tensor, create_graph: bool) -> Tensor:
        ce = F.cross_entropy(self.flat(theta, x), y)
        return torch.autograd.grad(ce, theta, create_graph=create_graph)[0]

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float | Tensor]]:
        s = self.settings
        expert = int(torch.randint(len(self.buffer), (1,), generator=generator))
        start_epoch = int(torch.randint(s.max_start_epoch, (1,), generator=generator))
        rows = self.buffer.trajectory_rows(expert, [start_epoch, start_epoch + s.expert_epochs])
        device = self.context.device
        start, target = to_device(rows[0], device), to_device(rows[1], device)
        steps = self._plan(synthetic, generator)
        distance = (start - target).square().sum()
        if s.unroll == "full":
            theta = start.clone().requires_grad_(True)
            for step in steps:
                x, y = self._images(synthetic, step)
                theta = theta - self.syn_lr * self._step_gradient(theta, x, y, True)
            loss = (theta - target).square().sum() / distance
        else:
            loss = self._recomputed(synthetic, steps, start, target, distance)
        # The lr stays on the device: the engine reads it with the loss, before the step.
        return loss, {"lr": self.syn_lr.detach(), "start_epoch": float(start_epoch)}

    def _recomputed(
        self, synthetic: SyntheticSet, steps: list, start: Tensor, target: Tensor, distance: Tensor
    ) -> Tensor:
        lr = self.syn_lr.detach()
        thetas = []
        theta = start
        for step in steps:  # forward: no graph to the stored tensors, one step at a time
            with torch.no_grad():
                x, y = self._images(synthetic, step)
            current = theta.detach().requires_grad_(True)
            thetas.append(current.detach())
            theta = (current - lr * self._step_gradient(current, x, y, False)).detach()
        loss = (theta - target).square().sum() / distance
        adjoint = 2.0 * (theta - target) / distance
        stored = [synthetic.bases, *synthetic.hallucinator_parameters()]
        totals = [torch.zeros_like(p) for p in stored]
        lr_total = torch.zeros((), device=start.device)
        for step, before in zip(reversed(steps), reversed(thetas)):  # backward, one step at a time
            current = before.requires_grad_(True)
            x, y = self._images(synthetic, step)
            g = self._step_gradient(current, x, y, True)
            inner = (g * adjoint).sum()
            parts = torch.autograd.grad(inner, [current, *stored], allow_unused=True)
            lr_total = lr_total - inner.detach()
            for total, part in zip(totals, parts[1:]):
                if part is not None:
                    total.sub_(lr * part)
            adjoint = adjoint - lr * parts[0]
            current.requires_grad_(False)
        grads = (lr_total.reshape(self.syn_lr.shape), *totals)
        return _Precomputed.apply(loss, grads, self.syn_lr, *stored)
