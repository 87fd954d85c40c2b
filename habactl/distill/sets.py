"""The two sides of every objective: the real training set and the learnable synthetic set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from habactl.distill.errors import DistillError
from habactl.runtime import to_device


class RealSet:
    """Normalised real training images, class-sorted, on the run's device.

    ``sample`` draws images of every class with one generator call, so the cost of
    picking a batch does not grow with the number of classes.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, num_classes: int, device: torch.device | None = None
    ) -> None:
        # Sorted and counted where the labels are (the host, from the engine), then moved
        # to ``device`` once: no round trip to read the counts back.
        order = torch.sort(labels, stable=True).indices
        counts = torch.bincount(labels.cpu(), minlength=num_classes)
        self.images = images[order].contiguous().to(device or images.device)
        self.labels = labels[order].contiguous().to(device or labels.device)
        self.counts: list[int] = [int(n) for n in counts]
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])[:-1]
        self.num_classes = num_classes

    @property
    def smallest_class(self) -> int:
        return min(self.counts)

    def check_per_class(self, per_class: int, option: str = "--real-per-class") -> None:
        if per_class < 1:
            raise DistillError(f"{option} must be at least 1, got {per_class}")
        small = self.smallest_class
        if per_class > small:
            worst = self.counts.index(small)
            raise DistillError(
                f"{option} {per_class} asks for more real images than class "
                f"{worst} has ({small} training images); use {option} {small} or fewer"
            )

    def sample_indices(self, per_class: int, generator: torch.Generator) -> Tensor:
        """(classes * per_class,) indices, ``per_class`` distinct images of each class in order."""
        longest = max(self.counts)
        keys = torch.rand(self.num_classes, longest, generator=generator)
        position = torch.arange(longest).unsqueeze(0)
        keys = keys.masked_fill(position >= torch.tensor(self.counts).unsqueeze(1), 2.0)
        picked = keys.argsort(dim=1)[:, :per_class]
        return (picked + self.offsets.unsqueeze(1)).flatten()

    def sample(self, per_class: int, generator: torch.Generator) -> Tensor:
        """(classes, per_class, C, H, W) random real images."""
        index = to_device(self.sample_indices(per_class, generator), self.images.device)
        return self.images[index].view(self.num_classes, per_class, *self.images.shape[1:])

    def class_images(self, k: int) -> Tensor:
        start = int(self.offsets[k])
        return self.images[start : start + self.counts[k]]


class SyntheticSet(nn.Module):
    """The stored tensors being learned: class-sorted bases and the decode pipeline.

    Objectives read it through ``draw`` (which hallucinations to look at) and ``decode``;
    the engine optimises ``bases`` and the pipeline's parameters.
    """

    bases: nn.Parameter
    pipeline: Any  # a codecs.Pipeline (typed loosely: nn.Module attributes confuse mypy)
    labels: Tensor

    def __init__(self, bases: Tensor, per_class: Sequence[int], pipeline: nn.Module) -> None:
        super().__init__()
        self.bases = nn.Parameter(bases.detach().clone())
        self.pipeline = pipeline
        self.per_class = [int(n) for n in per_class]
        labels = torch.repeat_interleave(
            torch.arange(len(self.per_class)), torch.tensor(self.per_class)
        )
        self.register_buffer("labels", labels, persistent=False)
        self.host_labels = labels  # stays on the host when the module moves: counts need no sync

    @property
    def num_classes(self) -> int:
        return len(self.per_class)

    @property
    def expansion(self) -> int:
        return int(self.pipeline.expansion)

    def hallucinator_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in sorted(self.pipeline.named_parameters())]

    def draw(self, views: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Which (basis, variant) pairs to decode: ``views`` distinct variants of every
        basis (all of them when ``views`` is 0 or at least the expansion).

        Returns basis indices (M,), class-sorted (basis-major), and the variants (M,), or
        None for "every variant of every basis", which ``decode`` does in one batched call.
        """
        n, e = self.bases.shape[0], self.expansion
        if views <= 0 or views >= e:
            return torch.arange(n).repeat_interleave(e), None
        variant = torch.rand(n, e, generator=generator).argsort(dim=1)[:, :views].flatten()
        return torch.arange(n).repeat_interleave(views), variant

    def decode(self, basis: Tensor | None = None, variant: Tensor | None = None) -> Tensor:
        """Images of the given (basis, variant) pairs, differentiable w.r.t. everything stored.

        ``variant`` None means every variant of every basis (item b·E + v), as ``draw``
        returns it; ``basis`` is then only checked."""
        device = self.bases.device
        # A quantize stage rounds to the grid the stored bases will have: fitted to all
        # of them, however few are decoded now.
        self.pipeline.calibrate(self.bases)
        # Each basis' class: a per-class stage (a per-class frequency mask) decodes by it.
        if variant is None and self.expansion > 1:
            if basis is not None and basis.numel() != self.bases.shape[0] * self.expansion:
                raise ValueError("variant None decodes every variant of every basis")
            return self.pipeline.decode_all(self.bases, classes=self.labels)
        if basis is None:
            return self.pipeline.decode(self.bases, classes=self.labels)
        x = self.bases[to_device(basis, device)]
        classes = self.labels[to_device(basis, self.labels.device)]
        if self.expansion == 1:
            return self.pipeline.decode(x, classes=classes)
        assert variant is not None  # expansion > 1 and a basis subset: draw gave variants
        # the stage checks the variants on the host, then moves them
        return self.pipeline.decode(x, variant, classes=classes)

    def item_labels(self, basis: Tensor) -> Tensor:
        return self.labels[to_device(basis, self.labels.device)]

    def class_counts(self, basis: Tensor) -> list[int]:
        """How many of the items ``basis`` names belong to each class, read on the host
        (``basis`` comes from ``draw``, on the host), so no device value is waited for."""
        items = self.host_labels[basis.cpu()]
        return torch.bincount(items, minlength=self.num_classes).tolist()
