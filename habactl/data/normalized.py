"""A source's training split in the input space of every network habactl trains.

``habactl compress`` normalises images by the per-channel mean and std of the training
split; expert trajectories and teachers are trained on the same normalised images, so
that a network trained here reads decoded synthetic images as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class NormalizedTrain:
    """The real training set, normalised as ``habactl compress`` normalises it."""

    normalization: dict[str, Any]
    images: Any  # a tensor, or a store's images (read when indexed)
    labels: torch.Tensor
    shape: tuple[int, int, int]
    classes: int

    @classmethod
    def of(cls, source: Any, device: torch.device) -> NormalizedTrain:
        from habactl.data.stored import is_stored
        from habactl.format.normalization import Normalizer, mean_std

        normalization = mean_std(source.mean(), source.std())
        images: Any
        if is_stored(source):  # each batch is read from the store (ascending) when drawn
            images = source.train.images.transformed(Normalizer(normalization)).to(device)
        else:
            images = Normalizer(normalization)(source.train.images.float()).to(device)
        labels = source.train.labels.long().to(device)
        shape = (source.channels, source.height, source.width)
        return cls(normalization, images, labels, shape, len(source.classes))


def normalized_test(source: Any, normalization: dict[str, Any]) -> Any:
    """The test split's images in the same space (a store's are read when indexed)."""
    from habactl.data.stored import is_stored
    from habactl.format.normalization import Normalizer

    images = source.test.images
    if is_stored(source):
        return images.transformed(Normalizer(normalization))
    return Normalizer(normalization)(images.float())


__all__ = ["NormalizedTrain", "normalized_test"]
