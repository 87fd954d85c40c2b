"""Opening a prepared store: cheap checks, memory-mapped images, reads by index."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from habactl.data.base import pick_split
from habactl.store.layout import (
    INDEX,
    SPLITS,
    STATE,
    Index,
    StoreError,
    fingerprint,
    parse_index,
)

if TYPE_CHECKING:
    from torch import Tensor

# Bytes hashed per read while verifying: memory stays flat whatever the store's size.
_VERIFY_CHUNK = 16 << 20


def verify_command(path: Path) -> str:
    return f"habactl prepare --verify {path}"


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a habactl store's index.json (not validated)."""
    try:
        raw = json.loads((Path(path) / INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("format") == "habactl-store"


def read_index(path: str | os.PathLike[str]) -> Index:
    """The validated index of the store at ``path``; nothing else is checked."""
    folder = Path(path)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise StoreError(f"{folder}: {what}; a store is the folder `habactl prepare` writes")
    index_path = folder / INDEX
    if not index_path.is_file():
        if (folder / STATE).is_file():
            raise StoreError(
                f"{folder}: incomplete: rerun the same prepare command to continue (its "
                f"prepare did not finish)"
            )
        raise StoreError(f"{folder}: not a store (no {INDEX}); make one with habactl prepare")
    try:
        raw = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{index_path}: cannot read ({' '.join(str(exc).split())})") from None
    return parse_index(raw, index_path)


class Store:
    """A prepared store, opened by :func:`open_store`. Images stay on disk until read."""

    def __init__(self, path: Path, index: Index) -> None:
        self.path = path
        self.index = index
        self._maps: dict[str, np.ndarray] = {}

    # -- what it holds ----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.index.name

    @property
    def classes(self) -> list[str]:
        return list(self.index.classes)

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.index.image_shape

    @property
    def is_digits(self) -> bool:
        return self.index.is_digits

    @property
    def fingerprint(self) -> str:
        return self.index.fingerprint

    @property
    def mean(self) -> list[float]:
        return list(self.index.mean)

    @property
    def std(self) -> list[float]:
        return list(self.index.std)

    @property
    def source(self) -> dict:
        return dict(self.index.source)

    @property
    def settings(self) -> dict:
        return dict(self.index.settings)

    def __len__(self) -> int:
        return self.index.splits["train"].count

    def count(self, split: str) -> int:
        return self._split(split).count

    def counts(self, split: str) -> list[int]:
        """Images per class in ``split`` ("train" or "test")."""
        return list(self._split(split).counts)

    def offsets(self, split: str) -> list[int]:
        """Index of each class's first image in ``split``."""
        return self._split(split).offsets

    def _split(self, split: str):
        splits = self.index.splits
        return pick_split(split, splits["train"], splits["test"])

    # -- pixels -----------------------------------------------------------------------
    def images(self, split: str) -> np.ndarray:
        """All images of ``split``: a read-only uint8 memmap (N, C, H, W), class-contiguous."""
        entry = self._split(split)
        if split not in self._maps:
            shape = (entry.count, *self.image_shape)
            if entry.count == 0:  # mmap cannot map an empty file
                array = np.zeros(shape, dtype=np.uint8)
                array.flags.writeable = False
                self._maps[split] = array
            else:
                self._maps[split] = np.memmap(
                    self.path / entry.file, dtype=np.uint8, mode="r", shape=shape
                )
        return self._maps[split]

    def labels(self, split: str) -> np.ndarray:
        """The label of every image of ``split``: int64 (N,), derived from the counts."""
        counts = self.counts(split)
        return np.repeat(np.arange(len(counts), dtype=np.int64), counts)

    def read(self, split: str, indices) -> Tensor:
        """Images at ``indices`` (any order, repeats allowed) as a uint8 tensor
        (n, C, H, W) in the order given; the file is read in ascending order."""
        import torch

        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        count = self.count(split)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= count):
            bad = int(wanted.min()) if wanted.min() < 0 else int(wanted.max())
            raise IndexError(f"index {bad} is outside the {split} split's {count} images")
        order = np.argsort(wanted, kind="stable")
        out = np.empty((wanted.size, *self.image_shape), dtype=np.uint8)
        out[order] = self.images(split)[wanted[order]]
        return torch.from_numpy(out)

    def describe(self) -> dict:
        """A short, JSON-ready summary for provenance records (as DataSource.describe())."""
        c, h, w = self.image_shape
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "classes": self.num_classes,
            "image": {"channels": c, "height": h, "width": w},
            "train": self.count("train"),
            "test": self.count("test"),
        }

    def close(self) -> None:
        """Drop the memory maps (arrays already handed out keep theirs)."""
        self._maps.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, {self.describe()})"


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open the store at ``path`` after cheap checks: the index, and each data file's
    size and modification time as recorded when it was prepared (no rehash).

    StoreError (one line) names the problem: incomplete, edited, not a store.
    """
    folder = Path(path)
    index = read_index(folder)
    for split in SPLITS:
        entry = index.splits[split]
        file = folder / entry.file
        try:
            stat = file.stat()
        except OSError as exc:
            raise StoreError(f"{file}: cannot read ({exc.strerror or exc})") from None
        if stat.st_size != entry.bytes:
            raise StoreError(
                f"{file}: holds {stat.st_size:,} bytes, not {entry.bytes:,} "
                f"({entry.count:,} images); the store is damaged: prepare it again"
            )
        if stat.st_mtime_ns != entry.mtime_ns:
            raise StoreError(
                f"{file}: changed after the store was prepared (its modification time "
                f"differs); run `{verify_command(folder)}` to check every class "
                f"(needed once after copying a store)"
            )
    return Store(folder, index)


def verify_store(path: str | os.PathLike[str]) -> list[str]:
    """Rehash every class of both splits and compare with the index and the fingerprint;
    the problems found ([] when intact). Sizes and modification times are not compared."""
    folder = Path(path)
    index = read_index(folder)
    problems: list[str] = []
    hashes: dict[str, list[str]] = {}
    for split in SPLITS:
        entry = index.splits[split]
        file = folder / entry.file
        try:
            size = file.stat().st_size
        except OSError as exc:
            problems.append(f"{file}: cannot read ({exc.strerror or exc})")
            continue
        if size != entry.bytes:
            problems.append(f"{file}: holds {size:,} bytes, not {entry.bytes:,}")
            continue
        hashes[split] = _class_hashes(file, entry.counts, index.image_bytes)
        for cls, (found, recorded) in enumerate(zip(hashes[split], entry.sha256, strict=True)):
            if found != recorded:
                problems.append(
                    f"{file}: class {index.classes[cls]!r} ({split}) differs from the one prepared"
                )
    if not problems:
        counts = {s: index.splits[s].counts for s in SPLITS}
        if fingerprint(index.classes, index.image_shape, counts, hashes) != index.fingerprint:
            problems.append(f"{folder / INDEX}: the fingerprint does not match the data")
    return problems


def _class_hashes(file: Path, counts: list[int], image_bytes: int) -> list[str]:
    out = []
    with open(file, "rb") as handle:
        for n in counts:
            digest, left = hashlib.sha256(), n * image_bytes
            while left:
                block = handle.read(min(left, _VERIFY_CHUNK))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
            out.append(digest.hexdigest())
    return out


def reseal(path: str | os.PathLike[str]) -> Index:
    """After :func:`verify_store` found nothing: record the data files' current sizes and
    modification times, so that a copied (and verified) store opens again."""
    from dataclasses import replace

    from habactl.runtime import atomic

    folder = Path(path)
    index = read_index(folder)
    splits = {}
    for split in SPLITS:
        stat = (folder / index.splits[split].file).stat()
        splits[split] = replace(index.splits[split], mtime_ns=stat.st_mtime_ns)
    sealed = replace(index, splits=splits)
    atomic.write_text(folder / INDEX, sealed.to_json())
    return sealed
