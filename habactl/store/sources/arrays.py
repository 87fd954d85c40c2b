"""Any array-like of images with integer labels, read class by class in chunks.

The images may be a numpy array, a memory map (.npy, an uncompressed .npz member) or an
h5py dataset: only the rows of one chunk are read at a time. Labels are read whole
(8 bytes an image). Without a test split, each class is split by the seeded 80/20 rule
of habactl.data.split.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from habactl.data.arrays import class_names, labels_from_array
from habactl.data.split import split_class
from habactl.store.layout import StoreError
from habactl.store.pixels import (
    array_layout,
    check_dtype,
    convert_mode,
    image_shape,
    resize_chunk,
    to_uint8_nchw,
)
from habactl.store.sources.base import Header, Source, chunk_images, class_members
from habactl.store.writer import Piece

# (images, labels) of one split; images index like numpy along axis 0.
Pair = tuple[Any, Any]


class ArraySource(Source):
    """Pieces of a split, class by class, from arrays; ``pairs`` holds "train" and
    optionally "test" (else the 80/20 split per class)."""

    def __init__(
        self,
        name: str,
        pairs: dict[str, Pair],
        *,
        where: str,
        raw_classes: Any = None,
        is_digits: bool = False,
        classes: list[str] | None = None,
        description: dict | None = None,
        identity: dict | None = None,
        resolution: int | None = None,
        mode: str | None = None,
    ) -> None:
        self.where = where
        self.resolution = resolution
        self.mode = mode
        self.arrays: dict[str, Any] = {}
        self.layouts: dict[str, str] = {}
        labels: dict[str, np.ndarray] = {}
        shapes = {}
        for split, (images, raw_labels) in pairs.items():
            at = f"{where} ({split})"
            layout = array_layout(tuple(images.shape), at)
            check_dtype(images.dtype, at)
            labels[split] = labels_from_array(np.asarray(raw_labels), at).numpy()
            if labels[split].shape[0] != images.shape[0]:
                raise StoreError(
                    f"{at}: {images.shape[0]:,} images but {labels[split].shape[0]:,} labels; "
                    f"every image needs exactly one label"
                )
            if images.shape[0] == 0:
                raise StoreError(f"{at}: no images")
            self.arrays[split], self.layouts[split] = images, layout
            shapes[split] = image_shape(tuple(images.shape), layout)
        if "test" in shapes and shapes["test"] != shapes["train"]:
            raise StoreError(
                f"{where}: train images are {shapes['train']} but test images are {shapes['test']}"
            )
        top = max(int(lab.max()) for lab in labels.values()) + 1
        if classes is None:
            classes = class_names(raw_classes, top, where)
        elif top > len(classes):
            raise StoreError(f"{where}: label {top - 1} is outside [0, {len(classes)})")
        self.members = split_members(labels, len(classes))
        c, h, w = shapes["train"]
        c = {"L": 1, "RGB": 3}[mode] if mode else c
        shape = (c, resolution, resolution) if resolution else (c, h, w)
        counts = {s: [len(m) for m in self.members[s][1]] for s in self.members}
        self.header = Header(
            name=name,
            classes=list(classes),
            image_shape=shape,
            is_digits=is_digits,
            counts=counts,
            description=description or {"kind": "arrays"},
            identity=identity or {},
        )

    def pieces(self, split: str, first_class: int) -> Iterator[Piece]:
        array_split, members = self.members[split]
        images, layout = self.arrays[array_split], self.layouts[array_split]
        step = chunk_images(self.header.image_shape)
        where = f"{self.where} ({array_split})"
        for cls in range(first_class, len(members)):
            rows = members[cls]
            for start in range(0, rows.size, step):
                chunk = to_uint8_nchw(_rows(images, rows[start : start + step]), layout, where)
                if self.mode:
                    chunk = convert_mode(chunk, self.mode)
                if self.resolution:
                    chunk = resize_chunk(chunk, self.resolution)
                yield cls, chunk


def split_members(
    labels: dict[str, np.ndarray], num_classes: int
) -> dict[str, tuple[str, list[np.ndarray]]]:
    """Per store split: the array split it reads and each class's rows (ascending)."""
    train = class_members(labels["train"], num_classes)
    if "test" in labels:
        return {
            "train": ("train", train),
            "test": ("test", class_members(labels["test"], num_classes)),
        }
    kept, held = [], []
    for cls, rows in enumerate(train):
        train_pos, test_pos = split_class(cls, rows.size)
        kept.append(rows[train_pos])
        held.append(rows[test_pos])
    return {"train": ("train", kept), "test": ("train", held)}


def _rows(images: Any, rows: np.ndarray) -> np.ndarray:
    """``images[rows]`` for ascending rows: one slice when they are consecutive (the
    fast path for memory maps and HDF5), else a fancy index."""
    if rows.size and int(rows[-1]) - int(rows[0]) + 1 == rows.size:
        return np.asarray(images[int(rows[0]) : int(rows[-1]) + 1])
    return np.asarray(images[rows])
