"""The store's layout on disk: file names, the index.json schema and the fingerprint.

Standard library only, so that a tool may read a store's index without numpy or torch.
docs/store.md is the readable specification of the same rules.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from habactl.data.base import DataError
from habactl.errors import quote

FORMAT = "habactl-store"
VERSION = 1
INDEX = "index.json"
# Present while a prepare is under way (finished classes and their hashes); removed when
# index.json is written. Its presence without an index means "incomplete".
STATE = "prepare-state.json"
SPLITS = ("train", "test")
DATA_FILES = {"train": "train.u8", "test": "test.u8"}
# Bumped only if the bytes fed to the hash change; old fingerprints then stop matching.
FINGERPRINT_DOMAIN = b"habactl-store-fingerprint-v1\0"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def bytes_per_image(image_shape: Sequence[int]) -> int:
    """A stored image's size in its data file: one uint8 per value of (C, H, W)."""
    return math.prod(image_shape)


class StoreError(DataError):
    """A store that cannot be opened, is incomplete or was changed after preparing."""


def canonical(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the one JSON spelling that is hashed or compared."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def fingerprint(
    classes: Sequence[str],
    image_shape: Sequence[int],
    counts: Mapping[str, Sequence[int]],
    hashes: Mapping[str, Sequence[str]],
) -> str:
    """``sha256:<hex>`` over the domain string and the canonical JSON of the class names,
    the image shape and, per split, each class's (count, sha256 of its bytes).

    The per-class hashes stand for the pixels, so a resumed prepare never rehashes the
    classes it had finished, and the store's name and source are left out: the same
    pixels prepared from two places have one fingerprint.
    """
    document = {
        "classes": list(classes),
        "image": [int(v) for v in image_shape],
        **{s: [[int(n), h] for n, h in zip(counts[s], hashes[s], strict=True)] for s in SPLITS},
    }
    return "sha256:" + hashlib.sha256(FINGERPRINT_DOMAIN + canonical(document)).hexdigest()


@dataclass(frozen=True)
class SplitIndex:
    """One split as index.json records it; offsets and counts are in images."""

    file: str
    counts: list[int]
    sha256: list[str]
    bytes: int
    mtime_ns: int

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def offsets(self) -> list[int]:
        out, total = [], 0
        for n in self.counts:
            out.append(total)
            total += n
        return out

    def record(self) -> dict:
        return {
            "file": self.file,
            "count": self.count,
            "counts": self.counts,
            "offsets": self.offsets,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "mtime_ns": self.mtime_ns,
        }


@dataclass(frozen=True)
class Index:
    """A validated index.json."""

    name: str
    classes: list[str]
    image_shape: tuple[int, int, int]
    is_digits: bool
    splits: dict[str, SplitIndex]
    mean: list[float]
    std: list[float]
    fingerprint: str
    source: dict
    settings: dict
    library: str

    @property
    def image_bytes(self) -> int:
        return bytes_per_image(self.image_shape)

    def record(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "classes": self.classes,
            "image": list(self.image_shape),
            "is_digits": self.is_digits,
            "splits": {s: self.splits[s].record() for s in SPLITS},
            "mean": self.mean,
            "std": self.std,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "settings": self.settings,
            "library": self.library,
        }

    def to_json(self) -> str:
        return json.dumps(self.record(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def parse_index(raw: Any, where: Path) -> Index:
    """Validate a decoded index.json; StoreError (one line naming ``where``) if wrong."""

    def bad(message: str) -> StoreError:
        return StoreError(f"{where}: {message}")

    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise bad(f"not a habactl store index (format is not {FORMAT!r})")
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"version must be an integer, got {quote(version)}")
    if version > VERSION:
        raise bad(f"store version {version} is newer than this habactl reads ({VERSION})")
    if version < 1:
        raise bad(f"unknown store version {version}")
    name = _typed(raw, "name", str, bad)
    classes = _typed(raw, "classes", list, bad)
    if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise bad("classes must be a list of at least 2 non-empty names")
    if len(set(classes)) != len(classes):
        raise bad("class names are not unique")
    image = _typed(raw, "image", list, bad)
    if len(image) != 3 or not all(_is_count(v) and v > 0 for v in image):
        raise bad(f"image must be [channels, height, width], got {quote(image)}")
    is_digits = _typed(raw, "is_digits", bool, bad)
    image_bytes = bytes_per_image(image)
    splits_raw = _typed(raw, "splits", dict, bad)
    splits = {s: _parse_split(splits_raw.get(s), s, len(classes), image_bytes, bad) for s in SPLITS}
    if splits["train"].count == 0 or 0 in splits["train"].counts:
        raise bad("every class needs at least one train image")
    mean, std = (_floats(raw, key, image[0], bad) for key in ("mean", "std"))
    stored = _typed(raw, "fingerprint", str, bad)
    counts = {s: splits[s].counts for s in SPLITS}
    hashes = {s: splits[s].sha256 for s in SPLITS}
    if stored != fingerprint(classes, image, counts, hashes):
        raise bad("the fingerprint does not match the per-class hashes (index.json was edited)")
    return Index(
        name=name,
        classes=list(classes),
        image_shape=(image[0], image[1], image[2]),
        is_digits=is_digits,
        splits=splits,
        mean=mean,
        std=std,
        fingerprint=stored,
        source=_typed(raw, "source", dict, bad),
        settings=_typed(raw, "settings", dict, bad),
        library=_typed(raw, "library", str, bad),
    )


def _parse_split(raw: Any, split: str, num_classes: int, image_bytes: int, bad) -> SplitIndex:
    if not isinstance(raw, dict):
        raise bad(f"splits.{split} is missing")
    # The file name is fixed: an index must never point a reader at another path.
    if raw.get("file") != DATA_FILES[split]:
        raise bad(f"splits.{split}.file must be {DATA_FILES[split]!r}")
    counts = raw.get("counts")
    if not isinstance(counts, list) or len(counts) != num_classes:
        raise bad(f"splits.{split}.counts must list one count per class ({num_classes})")
    if not all(_is_count(n) for n in counts):
        raise bad(f"splits.{split}.counts must be non-negative integers")
    hashes = raw.get("sha256")
    if not isinstance(hashes, list) or len(hashes) != num_classes:
        raise bad(f"splits.{split}.sha256 must list one hash per class")
    if not all(isinstance(h, str) and _SHA256.fullmatch(h) for h in hashes):
        raise bad(f"splits.{split}.sha256 must be lowercase hex sha256 digests")
    entry = SplitIndex(
        file=DATA_FILES[split],
        counts=list(counts),
        sha256=list(hashes),
        bytes=raw.get("bytes", -1),
        mtime_ns=raw.get("mtime_ns", -1),
    )
    if raw.get("count") != entry.count or raw.get("offsets") != entry.offsets:
        raise bad(f"splits.{split}: count and offsets disagree with the per-class counts")
    if entry.bytes != entry.count * image_bytes:
        raise bad(f"splits.{split}.bytes must be count x image bytes ({entry.count * image_bytes})")
    if not _is_count(entry.mtime_ns):
        raise bad(f"splits.{split}.mtime_ns must be a non-negative integer")
    return entry


def _typed(raw: dict, key: str, kind: type, bad) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise bad(f"{key} must be a {kind.__name__}, got {quote(value)}")
    return value


def _floats(raw: dict, key: str, channels: int, bad) -> list[float]:
    values = raw.get(key)
    if (
        not isinstance(values, list)
        or len(values) != channels
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        raise bad(f"{key} must list one number per channel ({channels})")
    return [float(v) for v in values]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
