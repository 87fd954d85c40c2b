"""Writing a store's data files class by class, resumably, and its index last.

Finished classes are synced to disk and then recorded (count, sha256 of its bytes,
pixel sums, skipped files) in the state file, itself written atomically, every few
seconds and at the end of each split. A prepare that
is killed or runs out of disk leaves the classes it finished; the next run truncates
each data file to its last finished class and continues. ``index.json`` is written
only when both splits are complete, so a store without it never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from habactl import __version__
from habactl.runtime import atomic
from habactl.store.layout import (
    DATA_FILES,
    INDEX,
    SPLITS,
    STATE,
    Index,
    SplitIndex,
    StoreError,
    bytes_per_image,
    fingerprint,
)

STATE_FORMAT = "habactl-store-state"
# Finished classes are recorded (two syncs and a rename) at most this often, and at the
# end of each split: a killed prepare redoes at most this much work.
SAVE_SECONDS = 2.0
# A piece is one class's images in order; (class index, uint8 (n, C, H, W)).
Piece = tuple[int, np.ndarray]


@dataclass
class ClassRecord:
    """One finished class of one split."""

    count: int
    sha256: str
    sums: list[int]  # per channel, of the uint8 values: exact integers
    squares: list[int]
    skipped: list[str] = field(default_factory=list)


class _ClassHash:
    """Hash and pixel sums of one class as its chunks arrive."""

    def __init__(self, channels: int) -> None:
        self.digest = hashlib.sha256()
        self.count = 0
        self.sums = [0] * channels
        self.squares = [0] * channels
        self.skipped: list[str] = []

    def add(self, chunk: np.ndarray) -> None:
        self.digest.update(chunk.data)
        self.count += chunk.shape[0]
        # Integer sums are exact (255² fits in uint16; a chunk's sums fit in uint64).
        sums = chunk.sum(axis=(0, 2, 3), dtype=np.uint64).tolist()
        squares = np.square(chunk, dtype=np.uint16).sum(axis=(0, 2, 3), dtype=np.uint64).tolist()
        for c in range(chunk.shape[1]):
            self.sums[c] += int(sums[c])
            self.squares[c] += int(squares[c])

    def record(self) -> ClassRecord:
        return ClassRecord(
            self.count, self.digest.hexdigest(), self.sums, self.squares, self.skipped
        )


class StoreWriter:
    """Fills ``folder`` with a store: :meth:`begin`, :meth:`write` per split, :meth:`finish`.

    ``identity`` says what is being prepared (the source and the settings); a state
    file with another identity is never continued.
    """

    def __init__(
        self, folder: Path, *, classes: list[str], image_shape: tuple[int, int, int], identity: dict
    ) -> None:
        self.folder = Path(folder)
        self.classes = list(classes)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.image_bytes = bytes_per_image(self.image_shape)
        self.identity = identity
        self.done: dict[str, list[ClassRecord]] = {s: [] for s in SPLITS}
        self._saved = 0.0

    # -- the state file -------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "identity": self.identity,
            "classes": self.classes,
            "image": list(self.image_shape),
            "done": {s: [vars(r) for r in self.done[s]] for s in SPLITS},
        }

    def matches(self, state: dict) -> bool:
        """Whether a state file was written for this very prepare."""
        mine = self._state()
        return all(state.get(k) == mine[k] for k in ("format", "identity", "classes", "image"))

    def begin(self, state: dict | None = None) -> dict[str, int]:
        """Start afresh (``state`` None) or continue ``state``; the first class to write
        per split. Data after the last finished class is cut off."""
        self.done = {s: [] for s in SPLITS}
        if state is None:
            # The index goes first: from here on the folder never looks complete.
            for name in (INDEX, *DATA_FILES.values()):
                _remove(self.folder / name)
        else:
            for split in SPLITS:
                self.done[split] = [ClassRecord(**r) for r in state["done"][split]]
        self._save_state()
        for split in SPLITS:
            finished = sum(r.count for r in self.done[split]) * self.image_bytes
            path = self.folder / DATA_FILES[split]
            try:
                with open(path, "ab") as handle:
                    handle.truncate(finished)
            except OSError as error:
                reason = atomic.reason_of(error)
                raise atomic.OutputError(atomic.describe(error, path), reason) from None
        return {s: len(self.done[s]) for s in SPLITS}

    def _save_state(self) -> None:
        text = json.dumps(self._state(), sort_keys=True) + "\n"
        atomic.write_text(self.folder / STATE, text)
        self._saved = time.monotonic()

    # -- data -----------------------------------------------------------------------
    def write(
        self,
        split: str,
        pieces: Iterable[Piece],
        *,
        skipped: Callable[[int], list[str]] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Append ``pieces`` (class indices never decreasing, from the first unfinished
        class on) to the split's data file; every class up to the last is finished,
        missing ones with no images. ``skipped(c)`` names what the source left out of
        class c; ``progress(n)`` is told of each n images written."""
        path = self.folder / DATA_FILES[split]
        channels = self.image_shape[0]
        current, hasher = len(self.done[split]), _ClassHash(channels)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0))
        except OSError as error:
            reason = atomic.reason_of(error)
            raise atomic.OutputError(atomic.describe(error, path), reason) from None
        try:
            for cls, chunk in pieces:
                if cls < current or cls >= len(self.classes):
                    raise ValueError(f"class {cls} out of order (writing class {current})")
                while current < cls:
                    self._finish_class(fd, split, hasher, skipped)
                    current, hasher = current + 1, _ClassHash(channels)
                if chunk.shape[1:] != self.image_shape or chunk.dtype != np.uint8:
                    raise ValueError(f"chunk {chunk.dtype} {chunk.shape} for {self.image_shape}")
                chunk = np.ascontiguousarray(chunk)
                atomic.write_all(fd, chunk.data)
                hasher.add(chunk)
                if progress is not None:
                    progress(chunk.shape[0])
            while current < len(self.classes):
                self._finish_class(fd, split, hasher, skipped)
                current, hasher = current + 1, _ClassHash(channels)
        except OSError as error:
            raise atomic.OutputError(
                f"{atomic.describe(error, path)}; free space and rerun the same command to "
                f"continue",
                atomic.reason_of(error),
            ) from None
        finally:
            os.close(fd)

    def _finish_class(self, fd: int, split: str, hasher: _ClassHash, skipped) -> None:
        if skipped is not None:
            hasher.skipped = skipped(len(self.done[split]))
        self.done[split].append(hasher.record())
        last = len(self.done[split]) == len(self.classes)
        if last or time.monotonic() - self._saved >= SAVE_SECONDS:
            os.fsync(fd)  # the bytes are on disk before the state says they are
            self._save_state()

    # -- the index --------------------------------------------------------------------
    def finish(self, *, name: str, is_digits: bool, source: dict, settings: dict) -> Index:
        """Write index.json (the store is complete from here on) and drop the state."""
        train = self.done["train"]
        empty = [self.classes[i] for i, r in enumerate(train) if r.count == 0]
        if empty:
            raise StoreError(f"class {empty[0]!r} has no train images")
        splits = {}
        for split in SPLITS:
            path = self.folder / DATA_FILES[split]
            stat = path.stat()
            records = self.done[split]
            splits[split] = SplitIndex(
                file=DATA_FILES[split],
                counts=[r.count for r in records],
                sha256=[r.sha256 for r in records],
                bytes=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
            )
            if stat.st_size != splits[split].count * self.image_bytes:
                raise StoreError(f"{path}: holds {stat.st_size:,} bytes, not the images written")
        mean, std = _statistics(train, self.image_shape)
        counts = {s: splits[s].counts for s in SPLITS}
        hashes = {s: splits[s].sha256 for s in SPLITS}
        index = Index(
            name=name,
            classes=self.classes,
            image_shape=(self.image_shape[0], self.image_shape[1], self.image_shape[2]),
            is_digits=is_digits,
            splits=splits,
            mean=mean,
            std=std,
            fingerprint=fingerprint(self.classes, self.image_shape, counts, hashes),
            source=source,
            settings=settings,
            library=f"habactl {__version__}",
        )
        atomic.write_text(self.folder / INDEX, index.to_json())
        _remove(self.folder / STATE)
        atomic.sync_folder(self.folder)
        return index

    def skipped(self) -> list[str]:
        """Everything the source left out, over both splits."""
        return [name for s in SPLITS for r in self.done[s] for name in r.skipped]


def _statistics(
    train: list[ClassRecord], image_shape: tuple[int, ...]
) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of the train pixels in [0, 1], from exact sums."""
    _, h, w = image_shape
    pixels = sum(r.count for r in train) * h * w
    mean, std = [], []
    for c in range(image_shape[0]):
        m = sum(r.sums[c] for r in train) / (255 * pixels)
        second = sum(r.squares[c] for r in train) / (255 * 255 * pixels)
        mean.append(m)
        std.append(math.sqrt(max(0.0, second - m * m)))
    return mean, std


def read_state(folder: Path) -> dict | None:
    """The state file of an unfinished prepare, or None if there is none (or it is unreadable)."""
    try:
        state = json.loads((Path(folder) / STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return None
    return state


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise atomic.OutputError(atomic.describe(error, path), atomic.reason_of(error)) from None
