"""The two sides of every objective: the real training set and the learnable synthetic set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from habactl.distill.errors import DistillError
from habactl.runtime.device import derived_generator, to_device
from habactl.runtime.distributed import SINGLE, Collective


def iteration_classes(
    seed: int, iteration: int, num_classes: int, per_iteration: int | None
) -> list[int]:
    """The classes one iteration matches, ascending: all of them, or ``per_iteration``
    drawn afresh for each iteration from its own stream (derived from the seed and the
    iteration, so a resumed run and every torchrun rank draw the same ones)."""
    if per_iteration is None or per_iteration >= num_classes:
        return list(range(num_classes))
    generator = derived_generator("distill", seed, f"classes/iteration-{iteration}")
    return sorted(torch.randperm(num_classes, generator=generator)[:per_iteration].tolist())


class RealSide:
    """What every real side shares: per-class counts, the per-class check, and which
    classes an iteration matches on this process."""

    counts: list[int]
    num_classes: int

    def __init__(
        self,
        *,
        seed: int = 0,
        classes_per_iteration: int | None = None,
        collective: Collective = SINGLE,
    ) -> None:
        if classes_per_iteration is not None and not 1 <= classes_per_iteration:
            raise DistillError(
                f"--classes-per-iteration must be at least 1, got {classes_per_iteration}"
            )
        if classes_per_iteration is not None and classes_per_iteration > self.num_classes:
            raise DistillError(
                f"--classes-per-iteration {classes_per_iteration} is more than the data "
                f"set's {self.num_classes} classes"
            )
        self.seed = seed
        self.classes_per_iteration = classes_per_iteration
        self.collective = collective  # whose ranks share the classes
        self.iteration = 0

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

    def begin(self, iteration: int) -> None:
        """The engine says which iteration starts (before the objective's loss)."""
        self.iteration = iteration

    def matched_at(self, iteration: int) -> list[int]:
        """The classes ``iteration`` matches in this process: the iteration's classes
        and, under torchrun, every world-th of them from this rank's position (all
        classes: rank, rank + N, ..., each rank's share as before)."""
        active = iteration_classes(
            self.seed, iteration, self.num_classes, self.classes_per_iteration
        )
        return active[self.collective.rank :: self.collective.world_size]

    def matched(self) -> list[int]:
        """The classes the current iteration matches in this process (ascending)."""
        return self.matched_at(self.iteration)

    def sample(
        self, per_class: int, generator: torch.Generator, classes: list[int] | None = None
    ) -> Tensor:
        """(len(classes), per_class, C, H, W) random normalised real images of ``classes``
        (default: all), on the run's device."""
        raise NotImplementedError

    def class_images(self, k: int) -> Tensor:
        """Every training image of class ``k``, normalised."""
        raise NotImplementedError

    def read_class(self, k: int, positions: Tensor) -> Tensor:
        """(len(positions), C, H, W) normalised images of class ``k`` at ``positions``
        (0-based within the class), on the run's device: a few at a time, so that a pass
        over a class never holds all of it (a store reads just these)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop any reading ahead (the engine calls it when the run ends)."""


class RealSet(RealSide):
    """Normalised real training images, class-sorted, on the run's device.

    ``sample`` draws images of every class with one generator call, so the cost of
    picking a batch does not grow with the number of classes.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        device: torch.device | None = None,
        *,
        seed: int = 0,
        classes_per_iteration: int | None = None,
        collective: Collective = SINGLE,
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
        super().__init__(
            seed=seed, classes_per_iteration=classes_per_iteration, collective=collective
        )

    def sample_indices(self, per_class: int, generator: torch.Generator) -> Tensor:
        """(classes * per_class,) indices, ``per_class`` distinct images of each class in order."""
        longest = max(self.counts)
        keys = torch.rand(self.num_classes, longest, generator=generator)
        position = torch.arange(longest).unsqueeze(0)
        keys = keys.masked_fill(position >= torch.tensor(self.counts).unsqueeze(1), 2.0)
        picked = keys.argsort(dim=1)[:, :per_class]
        return (picked + self.offsets.unsqueeze(1)).flatten()

    def sample(
        self, per_class: int, generator: torch.Generator, classes: list[int] | None = None
    ) -> Tensor:
        """(len(classes), per_class, C, H, W) random real images of ``classes`` (default:
        all). Every class's indices are drawn whichever are asked for, so the stream
        does not depend on the classes."""
        picked = self.sample_indices(per_class, generator)
        rows = self.num_classes
        if classes is not None and list(classes) != list(range(self.num_classes)):
            rows = len(classes)
            picked = picked.view(self.num_classes, per_class)[list(classes)].flatten()
        index = to_device(picked, self.images.device)
        return self.images[index].view(rows, per_class, *self.images.shape[1:])

    def class_images(self, k: int) -> Tensor:
        start = int(self.offsets[k])
        return self.images[start : start + self.counts[k]]

    def read_class(self, k: int, positions: Tensor) -> Tensor:
        index = positions.cpu().long() + int(self.offsets[k])
        return self.images[to_device(index, self.images.device)]


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
