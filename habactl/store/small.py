"""``write_store``: a store from arrays in memory (small sets and tests), written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from habactl.runtime import atomic
from habactl.store.layout import SPLITS, StoreError
from habactl.store.sources.arrays import ArraySource
from habactl.store.writer import StoreWriter


def write_store(
    path: str | os.PathLike[str],
    *,
    name: str,
    classes: list[str],
    train: tuple[Any, Any],
    test: tuple[Any, Any],
    is_digits: bool = False,
    source: dict | None = None,
    settings: dict | None = None,
    force: bool = False,
) -> Path:
    """Write uint8 images (N, C, H, W) (numpy or torch) with int labels as a store.

    The images of each split may come in any order; the store keeps each class's images
    in their given order, class after class. Built in a temporary folder and renamed,
    so ``path`` is either absent (or the earlier store) or complete.
    """
    pairs = {}
    for split, (images, labels) in (("train", train), ("test", test)):
        images = _numpy(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise StoreError(
                f"{name} ({split}): images must be uint8 (N, C, H, W), got {images.dtype} "
                f"{images.shape}"
            )
        pairs[split] = (images, _numpy(labels))
    arrays = ArraySource(name, pairs, where=name, classes=list(classes), is_digits=is_digits)
    header = arrays.header
    empty = [classes[i] for i, n in enumerate(header.counts["train"]) if n == 0]
    if empty:
        raise StoreError(f"{name}: class {empty[0]!r} has no train images")
    atomic.check_folder_target(Path(path), force)
    with atomic.atomic_folder(path, kind="store") as folder:
        writer = StoreWriter(
            folder, classes=header.classes, image_shape=header.image_shape, identity={}
        )
        writer.begin(None)
        for split in SPLITS:
            writer.write(split, arrays.pieces(split, 0))
        writer.finish(
            name=name,
            is_digits=is_digits,
            source=source or {"kind": "arrays"},
            settings=settings or {},
        )
    return Path(path)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)
