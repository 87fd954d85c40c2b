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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from habactl import distributed
from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, Objective, setting
from habactl.distill.sets import SyntheticSet
from habactl.nets import seeded as networks
from habactl.nets.registry import arch_name
from habactl.runtime import to_device


class DistributionMatching(Objective):
    name = "dm"
    summary = "distribution matching"

    @dataclass(frozen=True)
    class Settings:
        # real images per class per iteration (reference: 256)
        real_per_class: int = setting(32, "--real-per-class")
        # hallucinations per basis per iteration; 0 = all
        views: int = setting(1, "--views")
        embed_arch: str = setting("convnet")  # the randomly initialised embedder
        embed_width: float = setting(1.0)  # its width multiplier (1.0 = 128 channels)
        # one augmentation draw per class ("class") or per iteration
        siamese: str = setting("class")

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(context, settings)
        s = self.settings
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
        if self.settings["siamese"] == "iteration":
            return [augment.sample(generator)] * self.context.num_classes
        return [augment.sample(generator) for _ in range(self.context.num_classes)]

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        context = self.context
        classes = context.num_classes
        per = self.settings["real_per_class"]
        # Fixed order of draws: network, real indices, hallucinations, augmentation.
        networks.redraw(self.net, generator)
        real = context.real.sample(per, generator)  # (classes, per, C, H, W)
        basis, variant = synthetic.draw(self.settings["views"], generator)
        params = self._augment_params(generator)

        if distributed.world_size() > 1:  # every draw above is made on every rank alike
            return self._share_loss(synthetic, basis, variant, real, params)
        syn = synthetic.decode(basis, variant)  # (M, C, H, W), class-sorted
        items = synthetic.class_counts(basis)  # on the host: no device read
        augment = context.augment
        syn = torch.cat([augment.apply(part, p) for part, p in zip(syn.split(items), params)])

        with torch.inference_mode():
            real = torch.cat([augment.apply(real[c], params[c]) for c in range(classes)])
            embedded = networks.embed_no_grad(self.net, real, self.chunk)
            real_mean = embedded.view(classes, per, -1).mean(dim=1)
        real_mean = real_mean.clone()  # an ordinary tensor, usable next to autograd ones

        embedded = networks.embed(self.net, syn, self.chunk)
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
        real: Tensor,
        params: list[Any],
    ) -> tuple[Tensor, dict[str, float]]:
        """This rank's classes' part of the loss (under torchrun): the same terms as
        ``loss``, for classes rank, rank + N, ...; the engine sums the gradients."""
        context = self.context
        classes = context.num_classes
        per = self.settings["real_per_class"]
        owned = distributed.my_share(classes)
        if not owned:  # more ranks than classes: this one has nothing to add
            return synthetic.bases.sum() * 0.0, {}
        items = synthetic.class_counts(basis)
        syn = synthetic.decode(basis, variant).split(items)
        augment = context.augment
        embedded = networks.embed(
            self.net, torch.cat([augment.apply(syn[c], params[c]) for c in owned]), self.chunk
        )
        with torch.inference_mode():
            mine = torch.cat([augment.apply(real[c], params[c]) for c in owned])
            real_mean = networks.embed_no_grad(self.net, mine, self.chunk)
            real_mean = real_mean.view(len(owned), per, -1).mean(dim=1)
        real_mean = real_mean.clone()
        means = embedded.split([items[c] for c in owned])
        syn_mean = torch.stack([part.mean(dim=0) for part in means])
        return (real_mean - syn_mean).square().sum(), {}
