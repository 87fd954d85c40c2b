"""Array files opened without reading their images: .npz, .npy and HDF5.

An uncompressed .npz member is read where it lies inside the zip file; a compressed one
is unpacked in chunks into a scratch file in the store's folder (removed at the end) and
read from there; .npy files are read in place. Rows are read with plain reads, not a
memory map, so that the pages read count against the OS cache, not against the
process's memory. HDF5 datasets are read a slice at a time by h5py. Labels are read
whole (8 bytes an image).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from habactl.data.base import reason
from habactl.data.files import check_kind
from habactl.runtime import atomic
from habactl.store.layout import StoreError
from habactl.store.sources.arrays import ArraySource
from habactl.store.sources.base import CHUNK_BYTES

KERAS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length


class FileArrays(ArraySource):
    """An ArraySource that owns open files and scratch files, released by close()."""

    handles: list[Any]
    scratch: list[Path]

    def close(self) -> None:
        for array in self.arrays.values():
            if hasattr(array, "close"):
                array.close()
        for handle in getattr(self, "handles", []):
            with contextlib.suppress(Exception):
                handle.close()
        for path in getattr(self, "scratch", []):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _describe(kind: str, path: Path, extra: dict | None = None) -> dict:
    return {"kind": kind, "name": path.name, **(extra or {})}


def _identity(*paths: Path) -> dict:
    from habactl.store.sources import file_identity

    return {"files": [file_identity(p) for p in paths]}


def _pairs_of(names: set[str], images_key: str, labels_key: str, where: str) -> dict:
    """Which arrays hold which split: Keras names, else the images/labels pair."""
    if "x_train" in names or "y_train" in names:
        wanted = {s: KERAS[s] for s in ("train", "test") if s == "train" or KERAS[s][0] in names}
    else:
        wanted = {"train": (images_key, labels_key)}
    for keys in wanted.values():
        for key in keys:
            if key not in names:
                found = ", ".join(sorted(names)) or "nothing"
                raise StoreError(f"{where}: no array {key!r} (found: {found})")
    return wanted


# --- .npz ----------------------------------------------------------------------------


def open_npz(
    path: Path, *, images_key: str, labels_key: str, scratch: Path, options: Any
) -> FileArrays:
    check_kind(path, "npz")
    try:
        archive = zipfile.ZipFile(path)
        names = {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
        wanted = _pairs_of(names, images_key, labels_key, str(path))
        pairs = {
            split: (
                _npz_images(path, archive, f"{ik}.npy", scratch),
                _npz_small(archive, f"{lk}.npy", path),
            )
            for split, (ik, lk) in wanted.items()
        }
        raw_classes = _npz_small(archive, "classes.npy", path) if "classes" in names else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise StoreError(f"{path}: cannot read .npz file ({reason(exc)})") from exc
    source = FileArrays(
        path.name,
        pairs,
        where=str(path),
        raw_classes=raw_classes,
        description=_describe("npz", path),
        identity=_identity(path),
        resolution=options.resolution,
        mode=options.mode,
    )
    source.handles = [archive]
    source.scratch = [a.path for a, _ in pairs.values() if isinstance(a, _Unpacked)]
    return source


def _npz_small(archive: zipfile.ZipFile, member: str, path: Path) -> np.ndarray:
    with archive.open(member) as handle:
        return np.lib.format.read_array(handle, allow_pickle=False)


def _npy_header(handle: Any, where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    if dtype.hasobject:
        raise StoreError(
            f"{where}: holds Python objects (pickled data, which habactl never loads); "
            f"store uint8 or float images"
        )
    return shape, dtype, fortran


def _npz_images(path: Path, archive: zipfile.ZipFile, member: str, scratch: Path) -> Any:
    info = archive.getinfo(member)
    where = f"{path}:{member}"
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            signature, name_length, extra_length = _LOCAL_HEADER.unpack(handle.read(30))
            if signature != b"PK\x03\x04":
                raise StoreError(f"{where}: damaged zip entry")
            handle.seek(info.header_offset + 30 + name_length + extra_length)
            shape, dtype, fortran = _npy_header(handle, where)
            offset = handle.tell()
        return rows_of(path, offset, shape, dtype, fortran)
    with archive.open(member) as handle:
        shape, dtype, fortran = _npy_header(handle, where)
    return _Unpacked(
        archive, member, scratch / f".scratch-{member.replace('/', '_')}", shape, dtype, fortran
    )


def rows_of(path: Path, offset: int, shape: Any, dtype: np.dtype, fortran: bool) -> Any:
    """The array stored at ``offset`` in ``path``, indexable by rows: FileRows for the
    usual C order; a memory map for Fortran order (rows are not contiguous there)."""
    need = offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if os.path.getsize(path) < need:
        raise StoreError(f"{path}: ends before the array it declares (truncated)")
    if fortran:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F")
    return FileRows(path, offset, tuple(shape), dtype)


class FileRows:
    """A C-ordered array in a file whose rows are read on demand with plain reads."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._handle: Any = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        """``rows``: a slice (step 1) or ascending row indices."""
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
            runs = [(start, max(start, stop))]
        else:
            runs = _runs(np.asarray(rows, dtype=np.int64))
        out = np.empty((sum(b - a for a, b in runs), *self.shape[1:]), dtype=self.dtype)
        view = out.reshape(-1).view(np.uint8).data
        if self._handle is None:
            self._handle = open(self.path, "rb")
        at = 0
        for first, end in runs:
            size = (end - first) * self.row_bytes
            self._handle.seek(self.offset + first * self.row_bytes)
            if self._handle.readinto(view[at : at + size]) != size:
                raise StoreError(f"{self.path}: ends before the array it declares (truncated)")
            at += size
        return out

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Ascending rows as [first, end) runs of consecutive rows."""
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [rows.size]))
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, ends, strict=True)]


class _Unpacked:
    """A compressed .npz member, unpacked into a scratch file on first use and mapped."""

    def __init__(self, archive, member, path: Path, shape, dtype, fortran) -> None:
        self.archive, self.member, self.path = archive, member, path
        self.shape, self.dtype, self.fortran = tuple(shape), dtype, fortran
        self._map: Any = None

    def _array(self) -> np.ndarray:
        if self._map is None:
            try:
                with self.archive.open(self.member) as source, open(self.path, "wb") as out:
                    _npy_header(source, self.member)
                    while block := source.read(CHUNK_BYTES):
                        out.write(block)
            except OSError as error:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise atomic.OutputError(
                    f"{atomic.describe(error, self.path)} while unpacking {self.member}",
                    atomic.reason_of(error),
                ) from None
            self._map = rows_of(self.path, 0, self.shape, self.dtype, self.fortran)
        return self._map

    def __getitem__(self, rows: Any) -> np.ndarray:
        return self._array()[rows]

    def close(self) -> None:
        if self._map is not None and hasattr(self._map, "close"):
            self._map.close()


# --- .npy ----------------------------------------------------------------------------


def open_npy(path: Path, *, options: Any) -> FileArrays:
    """A folder of .npy files (x_train.npy, y_train.npy[, x_test.npy, y_test.npy], or
    images.npy and labels.npy; optional classes.npy), or an images .npy with --labels."""
    if path.is_dir():
        names = {p.stem for p in path.glob("*.npy")}
        wanted = _pairs_of(names, "images", "labels", str(path))
        files = {s: (path / f"{ik}.npy", path / f"{lk}.npy") for s, (ik, lk) in wanted.items()}
        classes_file = path / "classes.npy" if "classes" in names else None
    else:
        labels = options.labels
        if labels is None:
            raise StoreError(
                f"{path}: a single .npy holds no labels; pass --labels LABELS.npy, or give a "
                f"folder with images.npy and labels.npy"
            )
        files = {"train": (path, Path(labels))}
        classes_file = None
    pairs = {s: (_npy_rows(i), _load_npy(lab)) for s, (i, lab) in files.items()}
    raw_classes = _load_npy(classes_file) if classes_file else None
    every = [p for pair in files.values() for p in pair]
    return FileArrays(
        path.name,
        pairs,
        where=str(path),
        raw_classes=raw_classes,
        description=_describe("npy", path),
        identity=_identity(*every),
        resolution=options.resolution,
        mode=options.mode,
    )


def _npy_rows(path: Path) -> Any:
    """An images .npy, read in place: only its header now."""
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        with open(path, "rb") as handle:
            shape, dtype, fortran = _npy_header(handle, str(path))
            offset = handle.tell()
    except (OSError, ValueError, EOFError) as exc:
        raise StoreError(f"{path}: cannot read .npy file ({reason(exc)})") from exc
    return rows_of(path, offset, shape, dtype, fortran)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise StoreError(f"{path}: holds Python objects (pickled data, never loaded)") from exc
        raise StoreError(f"{path}: cannot read .npy file ({reason(exc)})") from exc
    except (OSError, EOFError) as exc:
        raise StoreError(f"{path}: cannot read .npy file ({reason(exc)})") from exc


# --- HDF5 ----------------------------------------------------------------------------


def open_hdf5(path: Path, *, images_key: str, labels_key: str, options: Any) -> FileArrays:
    """Groups train/ and test/ holding the two datasets, or both at the top level
    (then 80/20 per class); class names from the root attribute ``classes``."""
    import h5py

    check_kind(path, "HDF5")
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: cannot read HDF5 file ({reason(exc)})") from exc
    try:
        groups = {"train": handle["train"]} if isinstance(handle.get("train"), h5py.Group) else {}
        if groups and isinstance(handle.get("test"), h5py.Group):
            groups["test"] = handle["test"]
        if not groups:
            groups = {"train": handle}
        pairs = {
            split: (_h5(path, g, images_key), _h5(path, g, labels_key)[()])
            for split, g in groups.items()
        }
        source = FileArrays(
            path.name,
            pairs,
            where=str(path),
            raw_classes=handle.attrs.get("classes"),
            description=_describe("hdf5", path),
            identity=_identity(path),
            resolution=options.resolution,
            mode=options.mode,
        )
    except BaseException:
        handle.close()
        raise
    source.handles = [handle]
    return source


def _h5(path: Path, group: Any, key: str) -> Any:
    import h5py

    item = group.get(key)
    if not isinstance(item, h5py.Dataset):
        found = ", ".join(sorted(group.keys())) or "nothing"
        what = "is not a dataset" if item is not None else "is missing"
        raise StoreError(f"{path}:{group.name.rstrip('/')}/{key} {what} (found: {found})")
    return item
