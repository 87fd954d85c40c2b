"""Distribution matching (DM, Zhao & Bilen 2023; docs/method.md).

Each iteration draws a fresh random embedding network and, per class, minimises
``|| mean emb(aug(real)) - mean emb(aug(synthetic)) ||^2`` (summed over classes, as in
the reference), with the same augmentation parameters on both sides of a class.

Where the time goes on a CPU, and what is done about it:
- the real side is most of the work and needs no gradient: every class's images go
  through the network in a few large no-grad batches (inference mode), not class by class;
- real images of all classes are picked with one generator call (``RealSet.sample``);
- the network's weights are re-drawn in place, never rebuilt, and need no gradient, so
  the synthetic backward pass computes input gradients only;
- with hallucinators, ``views`` bounds how many hallucinations of each basis are
  decoded per iteration (0: all of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, Objective, setting, worth_recomputing
from habactl.distill.sets import SyntheticSet
from habactl.nets import seeded as networks
from habactl.nets.registry import arch_name
from habactl.runtime.device import to_device


class DistributionMatching(Objective):
    name = "dm"
    summary = "distribution matching"
    samples_real = True

    @dataclass(frozen=True)
    class Settings:
        # real images per class per iteration (reference: 256)
        real_per_class: int = setting(
            32, "--real-per-class", "Real images per class per iteration.", min=1
        )
        views: int = setting(
            1, "--views", "Hallucinations per basis per iteration, 0 = all.", min=0
        )
        embed_arch: str = setting("convnet")  # the randomly initialised embedder
        embed_width: float = setting(1.0)  # its width multiplier (1.0 = 128 channels)
        # one augmentation draw per class ("class") or per iteration
        siamese: str = setting("class")

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(context, settings)
        s = self.draft()
        for key in ("real_per_class", "views"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise DistillError(f"dm: {key} must be an integer, got {s[key]!r}")
        if s["views"] < 0:
            raise DistillError(f"dm: views must be 0 (all) or more, got {s['views']}")
        if s["siamese"] not in ("class", "iteration"):
            raise DistillError(f"dm: siamese must be 'class' or 'iteration', got {s['siamese']!r}")
        s["embed_width"] = float(s["embed_width"])
        context.real.check_per_class(s["real_per_class"])
        s["embed_arch"] = arch_name(s["embed_arch"], *context.image_shape[1:])  # recorded
        self.settings = self.Settings(**s)
        self.net = networks.build(
            s["embed_arch"],
            context.image_shape,
            context.num_classes,
            width_mult=s["embed_width"],
            device=context.device,
            generator=context.init_generator,
            trainable=False,
        )
        self.net.eval()
        self.chunk = networks.chunk_size(context.device, context.image_shape)

    def _augment_params(self, generator: torch.Generator) -> list[Any]:
        augment = self.context.augment
        if self.settings.siamese == "iteration":
            return [augment.sample(generator)] * self.context.num_classes
        return [augment.sample(generator) for _ in range(self.context.num_classes)]

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        context = self.context
        classes = context.num_classes
        per = self.settings.real_per_class
        # Fixed order of draws: network, real indices, hallucinations, augmentation.
        networks.redraw(self.net, generator)
        ids = context.real.matched()  # all classes, unless shared by ranks or subsampled
        real = context.real.sample(per, generator, ids)  # (len(ids), per, C, H, W)
        basis, variant = synthetic.draw(self.settings.views, generator)
        params = self._augment_params(generator)

        if not ids:  # more ranks than classes: this one has nothing to add
            return synthetic.bases.sum() * 0.0, {}
        augment = context.augment
        with torch.inference_mode():  # each class augmented as the chunks need it
            parts = (augment.apply(row, params[c]) for row, c in zip(real, ids))
            embedded = _embed_parts(self.net, parts, self.chunk)
            real_mean = embedded.view(len(ids), per, -1).mean(dim=1)
        real_mean = real_mean.clone()  # an ordinary tensor, usable next to autograd ones
        del real, embedded  # the synthetic side's graph needs the room

        # A share of the classes (torchrun's ranks, or a subsample): the draws above were
        # made on every rank alike.
        if context.collective.world_size > 1 or len(ids) < classes:
            return self._share_loss(synthetic, basis, variant, real_mean, params, ids)
        syn = synthetic.decode(basis, variant)  # (M, C, H, W), class-sorted
        items = synthetic.class_counts(basis)  # on the host: no device read
        syn = torch.cat([augment.apply(part, p) for part, p in zip(syn.split(items), params)])

        embedded = _embed_recomputed(self.net, syn, self.chunk)
        labels = synthetic.item_labels(basis)
        sums = torch.zeros(classes, embedded.shape[1], device=embedded.device, dtype=embedded.dtype)
        sums = sums.index_add(0, labels, embedded)
        counts = to_device(torch.tensor(items, dtype=embedded.dtype), embedded.device).unsqueeze(1)
        syn_mean = sums / counts
        loss = (real_mean - syn_mean).square().sum()
        return loss, {}

    def _share_loss(
        self,
        synthetic: SyntheticSet,
        basis: Tensor,
        variant: Tensor | None,
        real_mean: Tensor,
        params: list[Any],
        owned: list[int],
    ) -> tuple[Tensor, dict[str, float]]:
        """The loss's terms of some classes: this rank's share under torchrun (classes
        rank, rank + N, ...; the engine sums the gradients), or this iteration's
        classes (``--classes-per-iteration``). ``real_mean`` holds their rows, in order."""
        items = synthetic.class_counts(basis)
        syn = synthetic.decode(basis, variant).split(items)
        augment = self.context.augment
        embedded = _embed_recomputed(
            self.net, torch.cat([augment.apply(syn[c], params[c]) for c in owned]), self.chunk
        )
        means = embedded.split([items[c] for c in owned])
        syn_mean = torch.stack([part.mean(dim=0) for part in means])
        return (real_mean - syn_mean).square().sum(), {}


def _embed_parts(net: Any, parts: Iterable[Tensor], chunk: int) -> Tensor:
    """``embed_no_grad(net, torch.cat(parts), chunk)`` without the concatenation: the
    same chunks of ``chunk`` images (so the same numbers), each embedded as soon as the
    parts fill it, so that memory holds about one chunk and one part, not every part."""
    outputs, pending, held = [], [], 0
    for part in parts:
        pending.append(part)
        held += part.shape[0]
        if held >= chunk:
            joined = torch.cat(pending)
            full = held - held % chunk
            outputs.append(networks.embed_no_grad(net, joined[:full], chunk))
            pending, held = ([joined[full:]] if full < held else []), held - full
    if held:
        outputs.append(networks.embed_no_grad(net, torch.cat(pending), chunk))
    return torch.cat(outputs)


def _embed_recomputed(net: Any, images: Tensor, chunk: int) -> Tensor:
    """``networks.embed`` (chunk by chunk, with a graph to ``images``); when the graph
    would keep more than ``RECOMPUTE_ABOVE`` bytes of activations (at 64x64, 200
    classes, IPC 1 it keeps 1.2 GiB), each chunk's are recomputed in the backward pass
    instead, for one more forward pass of the synthetic side. The values and the
    gradients are those of ``networks.embed`` either way."""
    count, _, height, width = images.shape
    if not worth_recomputing(net, count, height, width, chunk):
        return networks.embed(net, images, chunk)
    return torch.cat(
        [
            checkpoint(net.embed, part, use_reentrant=False, preserve_rng_state=False)
            for part in images.split(chunk)
        ]
    )
