"""DCC: gradient matching with contrastive signals (Lee et al., ICML 2022); docs/method.md.

Gradient matching (``dc``) compares, class by class, the gradient of a real batch of one
class with the gradient on that class's synthetic images: each term sees one class, so
nothing in the loss depends on how the classes differ. DCC compares the gradients
*summed over the classes* instead: the mean over classes of each class's real-batch
gradient against the gradient of the class-balanced loss on the whole synthetic set
(every class's items, each class weighing the same), with dc's layer-wise cosine
distance taken once per weight rather than once per class and weight. Everything else
is dc's: the network, its inner loop between matches, the loops by IPC, the learning
rates; this class is ``GradientMatching`` with another match.

Warm-up: the reference matches class by class (dc's loss) during the first quarter of
its iterations and contrastively afterwards; ``warmup`` is that fraction of the run's
``--iterations``.

Augmentation follows the engine's ``--augment``: with a DSA strategy (the default here)
each class draws one set of parameters for its real batch and its synthetic items alike
and the inner loop augments image by image (the paper's DSAC); ``--augment none`` is
plain DCC.

Under torchrun the real side is split by classes: each rank computes the real gradients
of its classes, the ranks sum them (one all-reduce, the size of the matched weights), and
every rank computes the whole synthetic side and returns 1/N of the distance, so the
ranks' summed gradients are those of one process.
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

from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, setting
from habactl.distill.objectives.dc import GradientMatching, layer_distance
from habactl.distill.sets import RealSide, SyntheticSet, iteration_classes
from habactl.nets import seeded as networks
from habactl.runtime.device import to_device


class ContrastiveGradientMatching(GradientMatching):
    name = "dcc"
    summary = "gradient matching summed over classes (contrastive signals)"
    # The reference's image lr and momentum; augmentation: the engine's DSA default.
    engine_defaults = {"lr_bases": 0.1, "momentum": 0.5}

    @dataclass(frozen=True)
    class Settings(GradientMatching.Settings):
        # fraction of --iterations matched class by class first (reference: 250 of 1,000)
        warmup: float = setting(0.25)

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(context, settings)
        s = self.draft()
        warmup = s["warmup"]
        if (
            isinstance(warmup, bool)
            or not isinstance(warmup, (int, float))
            or not 0.0 <= float(warmup) <= 1.0
        ):
            raise DistillError(f"dcc: warmup must be a fraction from 0 to 1, got {warmup!r}")
        s["warmup"] = float(warmup)
        self.settings = self.Settings(**s)
        # Siamese augmentation whenever the engine's strategy has an op (DSAC); none: DCC.
        self.siamese_augmentation = bool(context.augment.ops)

    def warmup_iterations(self) -> int:
        """Iterations at the start of the run that use dc's class-by-class match."""
        return int(self.settings.warmup * max(0, int(self.context.iterations)))

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        if self.context.real.iteration < self.warmup_iterations():
            return super().loss(synthetic, generator)
        return self._contrastive_loss(synthetic, generator), {}

    def _contrastive_loss(self, synthetic: SyntheticSet, generator: torch.Generator) -> Tensor:
        context = self.context
        classes = context.num_classes
        per = self.settings.real_per_class
        # The draws of dc's match, in its order: network (first match only), real,
        # hallucinations, augmentation; the same on every rank.
        if self.outer == 0:
            networks.redraw(self.net, generator)
            self.optimizer.state.clear()
        ids = context.real.matched()  # this rank's share of the iteration's classes
        real = context.real.sample(per, generator, ids)  # (len(ids), per, C, H, W)
        basis, variant = synthetic.draw(self.settings.views, generator)
        augment = context.augment
        params = (
            [augment.sample(generator) for _ in range(classes)]
            if self.siamese_augmentation
            else None
        )
        active = _iteration_classes(context.real)  # every rank's classes together
        weights = [p for p in self.net.parameters() if p.dim() > 1]

        # Real side: Σ over this rank's classes of the class's mean-loss gradient.
        g_real = [torch.zeros_like(w) for w in weights]
        for row, c in zip(real, ids):
            if params is not None:
                with torch.no_grad():
                    row = augment.apply(row, params[c])
            target = torch.full((per,), c, device=row.device, dtype=torch.long)
            grads = torch.autograd.grad(F.cross_entropy(self.net(row), target), weights)
            for total, g in zip(g_real, grads):
                total.add_(g)
        world = context.collective.world_size
        if world > 1:
            context.collective.all_reduce_sum(g_real)
        g_real = [g / len(active) for g in g_real]

        # Synthetic side: the class-balanced mean loss over every active class's items.
        syn = synthetic.decode(basis, variant)  # class-sorted
        items = synthetic.class_counts(basis)  # on the host: no device read
        parts = syn.split(items)
        chosen = [
            parts[c] if params is None else augment.apply(parts[c], params[c]) for c in active
        ]
        counts = [items[c] for c in active]
        labels = torch.repeat_interleave(torch.tensor(active), torch.tensor(counts))
        share = torch.repeat_interleave(
            torch.tensor([1.0 / (n * len(active)) for n in counts]), torch.tensor(counts)
        )
        device = syn.device
        logits = self.net(torch.cat(chosen))
        per_item = F.cross_entropy(logits, to_device(labels, device), reduction="none")
        loss_syn = (per_item * to_device(share.to(per_item.dtype), device)).sum()
        g_syn = torch.autograd.grad(loss_syn, weights, create_graph=True)
        distances = [layer_distance(r.unsqueeze(0), s.unsqueeze(0)) for r, s in zip(g_real, g_syn)]
        distance = functools.reduce(operator.add, distances)
        return distance / world if world > 1 else distance


def _iteration_classes(real: RealSide) -> list[int]:
    """The classes the current iteration matches, over all ranks (ascending)."""
    return iteration_classes(
        real.seed, real.iteration, real.num_classes, real.classes_per_iteration
    )
