"""The data types every source returns, their validation, and the content fingerprint."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from habactl.errors import HabaError

# Bumped only if the bytes fed to the hash change; old fingerprints then stop matching.
_FINGERPRINT_DOMAIN = b"habactl-data-fingerprint-v1\0"
# Statistics are accumulated over chunks so that CIFAR-sized sets need no full-size temporary.
_STATS_CHUNK = 4096


class DataError(HabaError):
    """A data set that cannot be read or does not meet the data contract."""


T = TypeVar("T")


def pick_split(split: str, train: T, test: T) -> T:
    """``train`` or ``test`` by the split's name; ValueError for any other name."""
    if split == "train":
        return train
    if split == "test":
        return test
    raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def reason(exc: BaseException) -> str:
    """An exception as one line, for wrapping third-party errors in a DataError."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True, eq=False)
class LabeledImages:
    """One split: images (N, C, H, W) float32 in [0, 1] and labels (N,) int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class DataSource:
    """A validated data set with a train and a test split.

    Build one with :func:`make_source`, which validates and fingerprints. Sources are
    shared (embedded ones are cached), so treat the tensors as read-only.
    """

    name: str
    classes: list[str]
    train: LabeledImages
    test: LabeledImages
    fingerprint: str
    is_digits: bool

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def height(self) -> int:
        return int(self.train.images.shape[2])

    @property
    def width(self) -> int:
        return int(self.train.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def mean(self) -> list[float]:
        """Per-channel mean over every train pixel."""
        return list(self._stats[0])

    def std(self) -> list[float]:
        """Per-channel population standard deviation over every train pixel."""
        return list(self._stats[1])

    @cached_property
    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # cached_property writes to __dict__ directly, so it works on a frozen dataclass.
        return channel_stats(self.train.images)

    def split(self, split: str) -> LabeledImages:
        return pick_split(split, self.train, self.test)

    def per_class_counts(self, split: str = "train") -> list[int]:
        """Number of images of each class in ``split`` ("train" or "test")."""
        labels = self.split(split).labels
        return torch.bincount(labels, minlength=self.num_classes).tolist()

    def describe(self) -> dict:
        """A short, JSON-ready summary for provenance records."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "classes": self.num_classes,
            "image": {"channels": self.channels, "height": self.height, "width": self.width},
            "train": len(self.train),
            "test": len(self.test),
        }


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std.

    Each chunk is summed in float32 (torch's cascade summation keeps that accurate and
    it is 3x faster than casting) and the chunk sums are accumulated in float64.
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK]
        total += chunk.sum(dim=(0, 2, 3)).double()
        squares += chunk.square().sum(dim=(0, 2, 3)).double()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0.0)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


def fingerprint(classes: Sequence[str], train: LabeledImages, test: LabeledImages) -> str:
    """``sha256:<hex>`` over class names, shapes and the bytes of both splits.

    The source's name is deliberately left out: the same data under two names (a
    registry name and an exported .npz, say) has the same fingerprint.
    """
    digest = hashlib.sha256(_FINGERPRINT_DOMAIN)
    digest.update(json.dumps(list(classes), ensure_ascii=False).encode("utf-8"))
    for split_name, split in (("train", train), ("test", test)):
        header = {"split": split_name, "shape": list(split.images.shape)}
        digest.update(json.dumps(header, sort_keys=True).encode("ascii"))
        # Explicit little-endian so the fingerprint is the same on every machine.
        digest.update(_le_bytes(split.images, "<f4"))
        digest.update(_le_bytes(split.labels, "<i8"))
    return "sha256:" + digest.hexdigest()


def _le_bytes(tensor: Tensor, dtype: str) -> memoryview:
    array = np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)
    return array.data.cast("B")


def validate(name: str, classes: Sequence[str], train: LabeledImages, test: LabeledImages) -> None:
    """Raise DataError unless both splits meet the data contract."""
    if len(classes) < 2:
        raise DataError(f"{name}: needs at least 2 classes, found {len(classes)}")
    for cls in classes:
        if not isinstance(cls, str) or not cls:
            raise DataError(f"{name}: class names must be non-empty strings, got {cls!r}")
    if len(set(classes)) != len(classes):
        raise DataError(f"{name}: class names are not unique")
    for split_name, split in (("train", train), ("test", test)):
        _validate_split(f"{name} ({split_name})", len(classes), split)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"{name}: train images are {tuple(train.images.shape[1:])} but test images "
            f"are {tuple(test.images.shape[1:])}"
        )
    counts = torch.bincount(train.labels, minlength=len(classes)).tolist()
    empty = [classes[i] for i, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(f"{name}: class {empty[0]!r} has no train images")


def _validate_split(where: str, num_classes: int, split: LabeledImages) -> None:
    images, labels = split.images, split.labels
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        raise DataError(f"{where}: images and labels must be tensors")
    if images.dtype != torch.float32 or images.dim() != 4:
        raise DataError(
            f"{where}: images must be float32 (N, C, H, W), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if labels.dtype != torch.int64 or labels.dim() != 1:
        raise DataError(
            f"{where}: labels must be int64 (N,), got {labels.dtype} {tuple(labels.shape)}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{where}: no images")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if min(images.shape[1:]) < 1:
        raise DataError(f"{where}: empty image shape {tuple(images.shape[1:])}")
    low, high = (float(v) for v in torch.aminmax(images))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DataError(f"{where}: images contain NaN or Inf")
    if low < 0.0 or high > 1.0:
        raise DataError(f"{where}: pixel values must lie in [0, 1], found [{low:g}, {high:g}]")
    label_low, label_high = (int(v) for v in torch.aminmax(labels))
    if label_low < 0 or label_high >= num_classes:
        bad = label_low if label_low < 0 else label_high
        raise DataError(f"{where}: label {bad} is outside [0, {num_classes})")


def make_source(
    name: str,
    classes: Sequence[str],
    train: LabeledImages,
    test: LabeledImages,
    *,
    is_digits: bool,
) -> DataSource:
    """Validate both splits, fingerprint them and build the DataSource."""
    classes = list(classes)
    validate(name, classes, train, test)
    return DataSource(
        name=name,
        classes=classes,
        train=train,
        test=test,
        fingerprint=fingerprint(classes, train, test),
        is_digits=is_digits,
    )
