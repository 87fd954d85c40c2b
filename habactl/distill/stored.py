"""The engine's real side when the data is a prepared store: read per iteration, ahead.

Nothing of the training set is loaded. Each iteration reads ``per_class`` random images
of each class it matches (only this rank's classes under torchrun, only the
iteration's classes with ``--classes-per-iteration``) as uint8, and converts and
normalises them on the run's device. While the objective computes iteration ``i``, a
background thread reads iteration ``i + 1``'s images, so the loop does not wait on the
disk.

Reading ahead needs to know the next iteration's images before the current iteration
has drawn from the objective's stream, so a store-backed run draws its real images
from streams of their own: class ``c`` of iteration ``i`` takes the first
``per_class`` of a random permutation of its images from a generator derived from
(seed, i, c). A seed therefore gives the same run again (and the same real images
whatever the number of torchrun ranks, and after a resume), but not the run the same
data in memory gives: that one draws its real images from the objective's stream.

The other passes over the training set the engine makes stream from the store too,
one class at a time: the planner's class spread and the frequency stage's mask.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from habactl.distill.sets import RealSide
from habactl.runtime.device import derived_generator
from habactl.runtime.distributed import SINGLE, Collective


def real_generator(seed: int, iteration: int, k: int) -> torch.Generator:
    """The stream that picks class ``k``'s real images in ``iteration``."""
    return derived_generator("distill", seed, f"real/iteration-{iteration}/class-{k}")


class StoredRealSet(RealSide):
    """Real training images read from a store when an iteration needs them (see the
    module doc). ``normalize`` maps [0, 1] pixels into the archive's space."""

    def __init__(
        self,
        source: Any,
        normalize: Any,
        device: torch.device,
        *,
        seed: int,
        iterations: int,
        classes_per_iteration: int | None = None,
        collective: Collective = SINGLE,
    ) -> None:
        self.source = source
        self.normalize = normalize
        self.device = device
        self.counts = source.per_class_counts("train")
        self.offsets = list(source.train.offsets)
        self.num_classes = len(self.counts)
        self.iterations = iterations
        self.image_shape = tuple(source.image_shape)
        super().__init__(
            seed=seed, classes_per_iteration=classes_per_iteration, collective=collective
        )
        self.per_class: int | None = None  # known once an objective checks it
        self._ahead: dict[int, tuple[tuple[int, tuple[int, ...]], Future[np.ndarray]]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def check_per_class(self, per_class: int, option: str = "--real-per-class") -> None:
        super().check_per_class(per_class, option)
        self.per_class = per_class  # what the objective will sample: read it ahead

    # -- which images -------------------------------------------------------------------
    def indices(self, iteration: int, classes: list[int], per_class: int) -> np.ndarray:
        """Store indices of ``per_class`` distinct images of each of ``classes``, class
        after class."""
        out = np.empty(len(classes) * per_class, dtype=np.int64)
        for row, k in enumerate(classes):
            generator = real_generator(self.seed, iteration, k)
            order = torch.randperm(self.counts[k], generator=generator)[:per_class]
            out[row * per_class : (row + 1) * per_class] = order.numpy() + self.offsets[k]
        return out

    def _read(self, iteration: int, classes: list[int], per_class: int) -> np.ndarray:
        return self.source.read("train", self.indices(iteration, classes, per_class))

    # -- reading ahead ----------------------------------------------------------------
    def begin(self, iteration: int) -> None:
        """Start reading this iteration's images and the next one's (in the background)."""
        super().begin(iteration)
        for old in [i for i in self._ahead if i < iteration]:
            self._ahead.pop(old)[1].cancel()
        if self.per_class is None:
            return
        for i in (iteration, iteration + 1):
            if i < self.iterations and i not in self._ahead:
                classes = self.matched_at(i)
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="habactl-read-ahead")
                future = self._pool.submit(self._read, i, classes, self.per_class)
                self._ahead[i] = ((self.per_class, tuple(classes)), future)

    def sample(
        self, per_class: int, generator: torch.Generator, classes: list[int] | None = None
    ) -> Tensor:
        """(len(classes), per_class, C, H, W) normalised real images on the device, for
        the current iteration (``generator`` is not used: see the module doc)."""
        classes = list(range(self.num_classes)) if classes is None else list(classes)
        ahead = self._ahead.pop(self.iteration, None)
        if ahead is not None and ahead[0] == (per_class, tuple(classes)):
            pixels = ahead[1].result()
        else:  # not what was read ahead (or nothing was): read it now
            if ahead is not None:
                ahead[1].cancel()
            pixels = self._read(self.iteration, classes, per_class)
        return self._normalised(pixels).view(len(classes), per_class, *self.image_shape)

    def class_images(self, k: int) -> Tensor:
        """Every training image of class ``k``, normalised, on the device."""
        return self.normalize(self.source.class_images("train", k, self.device))

    def read_class(self, k: int, positions: Tensor) -> Tensor:
        index = positions.cpu().numpy().astype(np.int64) + self.offsets[k]
        pixels = self.source.read("train", index)
        return self._normalised(pixels).view(len(index), *self.image_shape)

    def _normalised(self, pixels: np.ndarray) -> Tensor:
        from habactl.data.stored import to_float

        images = to_float(pixels, self.device)
        if getattr(self.normalize, "kind", None) == "mean-std":
            # in place: the same values as the Normalizer's, without two more copies
            shape = (1, -1, 1, 1)
            mean = self.normalize.mean.to(images).view(shape)
            return images.sub_(mean).div_(self.normalize.std.to(images).view(shape))
        return self.normalize(images)

    def close(self) -> None:
        for _, future in self._ahead.values():
            future.cancel()
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def class_spread(source: Any, normalize: Any) -> list[float]:
    """The engine's class spread (mean squared distance of a class's images to their
    class mean, in the normalised space), one class read at a time.

    Exact integer sums over the uint8 pixels: per pixel position, the sum and the sum of
    squares over the class's images give ``Σ_i (u_i - ū)² = Q - S² / n``; the mean-std
    normalisation only scales channel c by ``1 / (255 std_c)`` (the mean cancels). One
    pass of integer arithmetic over the store, no float copies of it."""
    std = [float(v) for v in normalize.std]
    out = []
    for k in range(source.num_classes):
        start, count = source.train.offsets[k], source.train.counts[k]
        pixels = source.train.file.range(start, start + count)  # (n, C, H, W) uint8
        sums = pixels.sum(axis=0, dtype=np.int64)
        wide = pixels.astype(np.uint16)
        squares = np.multiply(wide, wide).sum(axis=0, dtype=np.int64)  # 255² fits in 16 bits
        spread = 0.0
        for c, s in enumerate(std):
            deviation = squares[c] - sums[c].astype(np.float64) ** 2 / count
            spread += float(deviation.sum()) / (255.0 * s) ** 2
        out.append(spread / count)
    return out


def frequency_energy(
    stage: Any, source: Any, normalize: Any, sized: Any, per_class: bool
) -> Tensor:
    """The frequency stage's energies (mean square DCT coefficient) over the training
    set, one class read at a time: (1, C, H*W) shared, or (classes, C, H*W)."""
    energies, total, count = [], None, 0
    for k in range(source.num_classes):
        images = sized(normalize(source.class_images("train", k)))
        squares = stage.analyse_full(images.double()).flatten(2).square().sum(0)
        energies.append(squares / images.shape[0])
        total = squares if total is None else total + squares
        count += images.shape[0]
    if per_class:
        return torch.stack(energies)
    assert total is not None
    return (total / count).unsqueeze(0)
