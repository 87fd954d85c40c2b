"""Gradient matching: DC (Zhao et al. 2021) and DSA (Zhao & Bilen 2021); docs/method.md.

One engine iteration is one *outer step* of the reference: per class, the gradient of
the classification loss w.r.t. the network's weights on a real batch is matched to the
one on the class's (expanded) synthetic images by the layer-wise cosine distance, and
the stored tensors take one step. Between outer steps the network trains ``inner_loop``
epochs on the synthetic set; after ``outer_loop`` outer steps it is drawn afresh. So the
reference's "1,000 iterations" at IPC 10 are 10,000 engine iterations here.

``dsa`` is the same objective with Siamese augmentation: each class draws one set of
augmentation parameters and applies it to both sides of its match (the augmenter is
the engine's, shared with ``dm``); the inner loop trains with per-image draws, as the
reference does.

Cost: one batch per class and side (``per_class: loop``, the default), or every
class's gradients from one batched call (``per_class: vmap``: ``torch.func.vmap`` over
the class axis of ``grad``, classes with fewer synthetic items padded with
zero-weighted images). Both give the same loss; on a 2-core CPU the loop is ~2.5x
faster (vmap turns the per-class weight gradients into grouped convolutions), hence
the default. The real side needs no graph; the synthetic side keeps one to the stored
tensors (double backward). Only weights of two or more dimensions are matched (the
reference's distance ignores biases and norm parameters), so their gradients alone
are computed.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, Objective, setting
from habactl.distill.sets import SyntheticSet
from habactl.nets import seeded as networks
from habactl.nets.registry import arch_name
from habactl.runtime.device import to_device

# The reference's (outer_loop, inner_loop) by images per class; an IPC between two
# entries takes the lower one.
LOOPS_BY_IPC: tuple[tuple[int, int, int], ...] = (
    (1, 1, 1),
    (10, 10, 50),
    (20, 20, 25),
    (30, 30, 20),
    (40, 40, 15),
    (50, 50, 10),
)
EPSILON = 1e-6


def loops_for_ipc(ipc: int) -> tuple[int, int]:
    outer, inner = LOOPS_BY_IPC[0][1:]
    for threshold, o, i in LOOPS_BY_IPC:
        if ipc >= threshold:
            outer, inner = o, i
    return outer, inner


def layer_distance(real: Tensor, syn: Tensor) -> Tensor:
    """Σ over classes and output units of 1 − cos(real, syn), each unit's gradient
    flattened over the rest of its weight (the reference's "ours" distance).

    real, syn: (classes, out, ...) per-class gradients of one weight.
    """
    r = real.flatten(2)
    s = syn.flatten(2)
    cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + EPSILON)
    return (1.0 - cos).sum()


class GradientMatching(Objective):
    name = "dc"
    summary = "gradient matching"
    siamese_augmentation = False
    samples_real = True

    @dataclass(frozen=True)
    class Settings:
        # real images per class per match (reference: 256)
        # (the help of a flag dm declares too is dm's)
        real_per_class: int = setting(64, "--real-per-class", min=1)
        views: int = setting(0, "--views", min=0)  # hallucinations per basis per match; 0 = all
        # None: by IPC (the reference's table)
        outer_loop: int | None = setting(
            None, "--outer-loop", "Matches per network.", min=1, unset="by IPC, as the reference"
        )
        inner_loop: int | None = setting(
            None,
            "--inner-loop",
            "Network epochs on the synthetic set between matches.",
            min=0,
            unset="by IPC",
        )
        lr_net: float = setting(0.01)  # the network's SGD learning rate (no momentum)
        batch_train: int = setting(256)  # the network's batch size in the inner loop
        net_arch: str = setting("convnet")
        net_width: float = setting(1.0)
        # "loop": a batch per class; "vmap": all classes in one call
        per_class: str = setting("loop")

    # Engine settings the reference uses with this objective (the CLI's defaults).
    engine_defaults = {"lr_bases": 0.1, "momentum": 0.5, "augment": "none"}

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(context, settings)
        s = self.draft()
        for key in ("real_per_class", "views", "batch_train"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise DistillError(f"{self.name}: {key} must be an integer, got {s[key]!r}")
        if s["per_class"] not in ("loop", "vmap"):
            raise DistillError(
                f"{self.name}: per_class must be 'loop' or 'vmap', got {s['per_class']!r}"
            )
        if s["views"] < 0 or s["batch_train"] < 1:
            raise DistillError(f"{self.name}: views must be >= 0 and batch_train >= 1")
        outer, inner = loops_for_ipc(int(getattr(context, "ipc", 1) or 1))
        s["outer_loop"] = outer if s["outer_loop"] is None else s["outer_loop"]
        s["inner_loop"] = inner if s["inner_loop"] is None else s["inner_loop"]
        if not (
            isinstance(s["outer_loop"], int)
            and s["outer_loop"] >= 1
            and isinstance(s["inner_loop"], int)
            and s["inner_loop"] >= 0
        ):
            raise DistillError(
                f"{self.name}: outer_loop must be >= 1 and inner_loop >= 0, got "
                f"{s['outer_loop']!r} and {s['inner_loop']!r}"
            )
        s["lr_net"] = float(s["lr_net"])
        s["net_width"] = float(s["net_width"])
        if not s["lr_net"] > 0:
            raise DistillError(f"{self.name}: lr_net must be positive, got {s['lr_net']}")
        context.real.check_per_class(s["real_per_class"])
        s["net_arch"] = arch_name(s["net_arch"], *context.image_shape[1:])  # as recorded
        self.settings = self.Settings(**s)
        self.net = networks.build(
            s["net_arch"],
            context.image_shape,
            context.num_classes,
            width_mult=s["net_width"],
            device=context.device,
            generator=context.init_generator,
            trainable=True,
        )
        self.net.train()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=s["lr_net"])
        self.outer = 0  # outer steps taken with the current network

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "siamese_augmentation": self.siamese_augmentation}

    # -- the match --------------------------------------------------------------------
    def _gradients(
        self, images: Tensor, labels: Tensor, weights: Tensor | None
    ) -> dict[str, Tensor]:
        """Per-class gradients of the mean cross-entropy w.r.t. the matched weights.

        images (classes, n, C, H, W); labels, weights (classes, n) (weights None: all 1)."""
        params = {k: v.detach() for k, v in self.net.named_parameters()}
        matched = {k: v for k, v in params.items() if v.dim() > 1}
        fixed = {k: v for k, v in params.items() if v.dim() <= 1}
        net = self.net

        def class_loss(w: dict[str, Tensor], x: Tensor, y: Tensor, m: Tensor) -> Tensor:
            logits = functional_call(net, {**w, **fixed}, (x,))
            return (F.cross_entropy(logits, y, reduction="none") * m).sum() / m.sum()

        if weights is None:
            weights = torch.ones(labels.shape, device=images.device, dtype=images.dtype)
        return vmap(grad(class_loss), in_dims=(None, 0, 0, 0))(matched, images, labels, weights)

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        context = self.context
        classes = context.num_classes
        per = self.settings.real_per_class
        # Fixed order of draws: network (first match only), real, hallucinations, augmentation.
        if self.outer == 0:
            networks.redraw(self.net, generator)
            self.optimizer.state.clear()
        # all classes, unless shared by torchrun's ranks or subsampled per iteration
        ids = context.real.matched()
        real = context.real.sample(per, generator, ids)  # (len(ids), per, C, H, W)
        basis, variant = synthetic.draw(self.settings.views, generator)
        augment = context.augment
        params = (
            [augment.sample(generator) for _ in range(classes)]
            if self.siamese_augmentation
            else None
        )

        syn = synthetic.decode(basis, variant)  # class-sorted
        items = synthetic.class_counts(basis)  # on the host: no device read
        parts = list(syn.split(items))
        if len(ids) < classes:  # every draw above was made on every rank alike
            if not ids:
                return synthetic.bases.sum() * 0.0, {}
            parts = [parts[c] for c in ids]
        if params is not None:  # a class's draw is its own: augmenting a share changes no bit
            parts = [augment.apply(part, params[c]) for c, part in zip(ids, parts)]
            with torch.no_grad():
                real = torch.stack([augment.apply(row, params[c]) for c, row in zip(ids, real)])
        if self.settings.per_class == "loop":
            return self._loop_loss(real, parts, ids), {}
        syn_batch, mask = _pad_classes(parts)
        class_labels = to_device(torch.tensor(ids), real.device)

        with torch.no_grad():
            g_real = self._gradients(real, class_labels.unsqueeze(1).expand(len(ids), per), None)
        g_syn = self._gradients(syn_batch, class_labels.unsqueeze(1).expand(mask.shape), mask)
        # Summed left to right, as sum() would: the same bits as before, typed as a Tensor.
        distances = [layer_distance(g_real[k], g_syn[k]) for k in g_real]
        loss = functools.reduce(operator.add, distances)
        return loss, {}

    def _loop_loss(self, real: Tensor, parts: list[Tensor], ids: list[int]) -> Tensor:
        weights = [p for p in self.net.parameters() if p.dim() > 1]
        loss = real.new_zeros(())
        for row, c, part in zip(real, ids, parts):  # real holds the rows of ids, in order
            target = torch.full((real.shape[1],), c, device=real.device, dtype=torch.long)
            g_real = torch.autograd.grad(F.cross_entropy(self.net(row), target), weights)
            target = torch.full((part.shape[0],), c, device=part.device, dtype=torch.long)
            g_syn = torch.autograd.grad(
                F.cross_entropy(self.net(part), target), weights, create_graph=True
            )
            loss = loss + sum(
                layer_distance(r.detach().unsqueeze(0), s.unsqueeze(0))
                for r, s in zip(g_real, g_syn)
            )
        return loss

    # -- the inner loop -----------------------------------------------------------------
    def after_step(self, synthetic: SyntheticSet, generator: torch.Generator) -> None:
        self.outer += 1
        if self.outer >= self.settings.outer_loop:
            self.outer = 0  # the next match draws a new network
            return
        if self.settings.inner_loop == 0:
            return
        with torch.no_grad():
            basis, variant = synthetic.draw(0, generator)
            images = synthetic.decode(basis, variant).detach()
            labels = synthetic.item_labels(basis)
        batch = self.settings.batch_train
        for _ in range(self.settings.inner_loop):
            order = to_device(torch.randperm(images.shape[0], generator=generator), images.device)
            for index in order.split(batch):
                x = images[index]
                if self.siamese_augmentation:
                    x = self.context.augment(x, generator, per_sample=True)
                loss = F.cross_entropy(self.net(x), labels[index])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "outer": self.outer,
            "net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.outer = int(state["outer"])
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])


class DifferentiableSiameseGradientMatching(GradientMatching):
    name = "dsa"
    summary = "gradient matching with Siamese augmentation"
    siamese_augmentation = True
    engine_defaults = {"lr_bases": 0.1, "momentum": 0.5}


def _pad_classes(parts: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack per-class batches of unequal length: (classes, longest, ...) and a 0/1 mask."""
    lengths = [p.shape[0] for p in parts]
    longest = max(lengths)
    first = parts[0]
    if all(n == longest for n in lengths):
        mask = torch.ones(len(parts), longest, device=first.device, dtype=first.dtype)
        return torch.stack(parts), mask
    padded = [
        torch.cat([p, p.new_zeros(longest - p.shape[0], *p.shape[1:])])
        if p.shape[0] < longest
        else p
        for p in parts
    ]
    mask = to_device(
        torch.tensor([[1.0] * n + [0.0] * (longest - n) for n in lengths], dtype=first.dtype),
        first.device,
    )
    return torch.stack(padded), mask
