"""A prepared store seen as a data source: the same surface as ``DataSource``, nothing loaded.

``StoredSource`` answers what the loops ask a source (name, classes, fingerprint, shape,
mean and std, labels) from the store's index, and its splits' ``images`` are
``StoredImages``: an object that reads the images it is indexed with, and only those,
as float32 in [0, 1] (optionally through a transform, on a device). So code written for
``source.train.images[indices]`` reads ``len(indices)`` images from disk instead of
indexing a tensor of the whole set.

Reads are positional (``os.preadv`` into one buffer, one call per run of consecutive
images), not through a memory map: pages read stay in the OS page cache, shared by
every process that reads the store (every torchrun rank), but they are never mapped
into this process, so its resident memory does not grow with what it has read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from habactl.data.base import pick_split
from habactl.store import Store, open_store
from habactl.store.layout import StoreError, bytes_per_image

# Images per read when a whole class or split is streamed (class statistics, ZCA).
STREAM_CHUNK = 1024


class StoreFile:
    """One split's data file, read by image index with positional reads (thread-safe:
    ``preadv`` has no file position to share)."""

    def __init__(self, path: Path, count: int, image_shape: tuple[int, int, int]) -> None:
        self.path = path
        self.count = count
        self.image_shape = image_shape
        self.image_bytes = bytes_per_image(image_shape)
        self._fd: int | None = None
        self._lock = threading.Lock()

    def _descriptor(self) -> int:
        with self._lock:
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_RDONLY)
                except OSError as exc:
                    raise StoreError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
            return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to do
            pass

    def __getstate__(self) -> dict[str, Any]:  # a descriptor does not cross processes
        return {"path": self.path, "count": self.count, "image_shape": self.image_shape}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["count"], state["image_shape"])  # type: ignore[misc]

    def _fill(self, buffer: np.ndarray, first: int) -> None:
        """Read images ``first, first + 1, ...`` into ``buffer`` (n, C, H, W) uint8."""
        view = buffer.reshape(-1).data  # a view: reshape of a contiguous block
        offset, done = first * self.image_bytes, 0
        fd = self._descriptor()
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise StoreError(
                    f"{self.path}: ends early (image {first + done // self.image_bytes}); "
                    f"the store is damaged: prepare it again"
                )
            done += got

    def range(self, start: int, stop: int) -> np.ndarray:
        """Images ``start`` to ``stop`` (exclusive) as uint8 (n, C, H, W): one read."""
        if not 0 <= start <= stop <= self.count:
            raise IndexError(f"images {start}:{stop} are outside the split's {self.count}")
        out = np.empty((stop - start, *self.image_shape), dtype=np.uint8)
        if stop > start:
            self._fill(out, start)
        return out

    def rows(self, indices: Any) -> np.ndarray:
        """Images at ``indices`` (any order, repeats allowed) as uint8 (n, C, H, W) in the
        order given; the file is read in ascending order, one read per run of
        consecutive images."""
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.count):
            bad = int(wanted.min()) if wanted.min() < 0 else int(wanted.max())
            raise IndexError(f"index {bad} is outside the split's {self.count} images")
        order = np.argsort(wanted, kind="stable")
        ascending = wanted[order]
        unique = np.unique(ascending)
        block = np.empty((len(unique), *self.image_shape), dtype=np.uint8)
        # Runs of consecutive images: each is one positional read.
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for run in np.split(np.arange(len(unique)), breaks):
            if len(run):
                self._fill(block[run[0] : run[-1] + 1], int(unique[run[0]]))
        out = np.empty((wanted.size, *self.image_shape), dtype=np.uint8)
        # each sorted position takes the block row of its value (repeats share one read)
        out[order] = block[np.searchsorted(unique, ascending)]
        return out


def to_float(pixels: Tensor | np.ndarray, device: torch.device | None = None) -> Tensor:
    """uint8 images as float32 in [0, 1] on ``device``: moved as uint8 (a quarter of the
    bytes), converted there. The arithmetic is the in-memory sources' (``/ 255``), so a
    store's images equal the ones its source loads."""
    from habactl.runtime.device import to_device

    tensor = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels
    if device is not None and tensor.device != device:
        tensor = to_device(tensor, device)
    return tensor.to(torch.float32).div_(255.0)


class StoredImages:
    """One split's images, read when indexed: float32 (n, C, H, W) in [0, 1], or through
    ``transform`` (e.g. an archive's Normalizer), on ``device``.

    Supports what the training loops do with an image tensor: ``shape``, ``len``,
    ``images[i]``, ``images[a:b]``, ``images[index_tensor]``, ``.to(device)``. Pickles
    without its file descriptor (spawned evaluation workers reopen the file).
    """

    dtype = torch.float32

    def __init__(
        self,
        file: StoreFile,
        *,
        transform: Callable[[Tensor], Tensor] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.file = file
        self.transform = transform
        self.device = torch.device("cpu") if device is None else torch.device(device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.file.count, *self.file.image_shape))

    def __len__(self) -> int:
        return self.file.count

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def to(self, device: torch.device | str) -> StoredImages:
        return StoredImages(self.file, transform=self.transform, device=torch.device(device))

    def transformed(self, transform: Callable[[Tensor], Tensor]) -> StoredImages:
        """The same images through ``transform`` (applied after any transform already set)."""
        if self.transform is not None:
            transform = _Composed(self.transform, transform)
        return StoredImages(self.file, transform=transform, device=self.device)

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.file.count)
            if step == 1:
                return self._finish(self.file.range(start, max(start, stop)))
            index = np.arange(start, stop, step)
        elif isinstance(index, int | np.integer):
            position = int(index) + (self.file.count if int(index) < 0 else 0)
            return self._finish(self.file.range(position, position + 1))[0]
        elif isinstance(index, Tensor):
            index = index.detach().cpu().numpy()
        return self._finish(self.file.rows(index))

    def _finish(self, pixels: np.ndarray) -> Tensor:
        images = to_float(pixels, self.device)
        return images if self.transform is None else self.transform(images)

    def chunks(self, size: int = STREAM_CHUNK) -> Iterator[Tensor]:
        """Every image in order, ``size`` at a time."""
        for start in range(0, self.file.count, size):
            yield self[start : start + size]


class _Composed:
    """Two transforms one after the other (a class, not a lambda: it pickles)."""

    def __init__(self, first: Callable[[Tensor], Tensor], then: Callable[[Tensor], Tensor]):
        self.first, self.then = first, then

    def __call__(self, images: Tensor) -> Tensor:
        return self.then(self.first(images))


class StoredSplit:
    """A split of a store: lazily read ``images`` and the (small) ``labels`` tensor."""

    def __init__(self, store: Store, split: str) -> None:
        entry = store.index.splits[split]
        self.file = StoreFile(store.path / entry.file, entry.count, store.image_shape)
        self.images = StoredImages(self.file)
        self.labels = torch.from_numpy(store.labels(split))
        self.counts = list(entry.counts)
        self.offsets = list(entry.offsets)

    def __len__(self) -> int:
        return self.file.count


class StoredSource:
    """A prepared store with the surface of ``habactl.data.DataSource`` (see module doc)."""

    stored = True  # what the loops test to take the streaming path

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.path
        self.name = store.name
        self.classes = store.classes
        self.fingerprint = store.fingerprint
        self.is_digits = store.is_digits
        self.train = StoredSplit(store, "train")
        self.test = StoredSplit(store, "test")

    @property
    def channels(self) -> int:
        return self.store.image_shape[0]

    @property
    def height(self) -> int:
        return self.store.image_shape[1]

    @property
    def width(self) -> int:
        return self.store.image_shape[2]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.store.image_shape

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def mean(self) -> list[float]:
        """Per-channel mean over every train pixel, as the store recorded it."""
        return self.store.mean

    def std(self) -> list[float]:
        """Per-channel population std over every train pixel, as the store recorded it."""
        return self.store.std

    def split(self, split: str) -> StoredSplit:
        return pick_split(split, self.train, self.test)

    def per_class_counts(self, split: str = "train") -> list[int]:
        return list(self.split(split).counts)

    def class_images(self, split: str, k: int, device: torch.device | None = None) -> Tensor:
        """Every image of class ``k`` in ``split`` (one contiguous read), float in [0, 1]."""
        part = self.split(split)
        start = part.offsets[k]
        return to_float(part.file.range(start, start + part.counts[k]), device)

    def read(self, split: str, indices: Any) -> np.ndarray:
        """uint8 (n, C, H, W) images at ``indices`` of ``split``, in that order."""
        return self.split(split).file.rows(indices)

    def describe(self) -> dict:
        return self.store.describe()

    def __repr__(self) -> str:
        return f"StoredSource({str(self.path)!r})"


def is_stored(source: Any) -> bool:
    """Whether ``source`` is a store (read lazily) rather than a DataSource in memory."""
    return bool(getattr(source, "stored", False))


def is_stored_images(images: Any) -> bool:
    """Whether ``images`` are a store's (read when indexed) rather than a tensor."""
    return isinstance(images, StoredImages)


def open_stored(path: str | os.PathLike[str]) -> StoredSource:
    return StoredSource(open_store(path))
