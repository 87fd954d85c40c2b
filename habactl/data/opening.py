"""``open_data``: what the loops call with a data argument - a store, or a source in memory.

A prepared store (``habactl prepare``) is opened lazily (``StoredSource``); any other
spec goes to ``load_source``, which loads the whole set as float32. That is refused
when the set would take more than a bound (``HABACTL_MAX_IN_MEMORY``, 2 GiB by
default) with a one-line error that names the ``habactl prepare`` command to run: a
large set is prepared once and then read lazily, never loaded whole by surprise.
The size is estimated before anything is loaded, from the files' headers.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

from habactl.data.base import DataError

LIMIT_VARIABLE = "HABACTL_MAX_IN_MEMORY"
DEFAULT_LIMIT = 2 << 30  # bytes of float32 images (train + test)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def open_data(
    spec: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    **options: Any,
) -> Any:
    """A ``StoredSource`` for a store's folder, else the ``DataSource`` ``load_source``
    makes (after the size check). Options apply to files, as for ``load_source``."""
    from habactl.data.registry import load_source

    text = os.fspath(spec)
    path = Path(text).expanduser()
    if not _registry_name(text) and _is_store_folder(path):
        given = sorted(k for k, v in options.items() if v is not None)
        if given:
            raise DataError(f"{text}: a prepared store takes no {', '.join(given)} option")
        from habactl.data.stored import open_stored

        return open_stored(path)
    check_in_memory(text, **options)
    return load_source(text, root=root, download=download, **options)


def _registry_name(text: str) -> bool:
    from habactl.data.registry import ALIASES, EMBEDDED, TORCHVISION_SPECS

    key = text.strip().lower()
    key = ALIASES.get(key, key)
    looks_like_path = os.sep in text or "/" in text or text.startswith(("~", "."))
    return (key in EMBEDDED or key in TORCHVISION_SPECS) and not looks_like_path


def _is_store_folder(path: Path) -> bool:
    from habactl.store import is_store
    from habactl.store.layout import STATE

    # an unfinished prepare is a store too: opening it says how to finish it
    return path.is_dir() and (is_store(path) or (path / STATE).is_file())


def memory_limit() -> int | None:
    """The bound in bytes (None: no bound), from HABACTL_MAX_IN_MEMORY: a number of
    bytes with an optional K, M, G or T (binary units), or ``none``."""
    raw = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_LIMIT
    if raw.lower() in ("none", "off", "0"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", raw, flags=re.IGNORECASE)
    if match is None:
        raise DataError(
            f"{LIMIT_VARIABLE}={raw!r}: give bytes with an optional K, M, G or T (e.g. 8G), or none"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def check_in_memory(spec: str, **options: Any) -> None:
    """Refuse a source whose images would take more than ``memory_limit()`` bytes as
    float32 (estimated from headers; sources of unknown size pass)."""
    limit = memory_limit()
    if limit is None:
        return
    size = estimate_bytes(spec, **options)
    if size is None or size <= limit:
        return
    name = Path(spec).name.rstrip("/") or "data"
    stem = Path(name).stem if Path(name).suffix.lower() in (".npz", ".h5", ".hdf5") else name
    raise DataError(
        f"{spec}: its images take {_size(size)} as float32, more than habactl loads into "
        f"memory ({_size(limit)}, {LIMIT_VARIABLE}); prepare a store once and give that "
        f"instead: habactl prepare {spec} -o {stem}.store"
    )


def estimate_bytes(spec: str, **options: Any) -> int | None:
    """Bytes of float32 images (train and test) that loading ``spec`` would make; None
    for registry names (all of them are small) and what cannot be read (loading it
    then says what is wrong)."""
    if _registry_name(spec):
        return None
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            return _folder_bytes(path)
        suffix = path.suffix.lower()
        if suffix == ".npz" and path.is_file():
            return _npz_bytes(path)
        if suffix in (".h5", ".hdf5") and path.is_file():
            return _hdf5_bytes(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return None


def _npz_bytes(path: Path) -> int:
    import numpy as np

    total = 0
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as handle:
                major, _ = np.lib.format.read_magic(handle)
                header = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = header(handle)
            if len(shape) >= 3:  # images; labels and class names are 1-D
                total += 4 * _product(shape)
    return total


def _hdf5_bytes(path: Path) -> int:
    import h5py

    total = 0

    def visit(_name: str, item: Any) -> None:
        nonlocal total
        if isinstance(item, h5py.Dataset) and len(item.shape) >= 3:
            total += 4 * _product(item.shape)

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return total


def _folder_bytes(path: Path) -> int | None:
    from PIL import Image

    from habactl.data.folder import IMAGE_SUFFIXES

    count, first = 0, None
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            count += 1
            first = first or Path(folder) / name
    if first is None:
        return None
    try:
        with Image.open(first) as image:
            width, height = image.size
            channels = 1 if image.mode in ("1", "L") else 3
    except (OSError, ValueError, SyntaxError):
        return None  # loading the folder says what is wrong with it
    return 4 * count * channels * height * width


def _product(shape: Any) -> int:
    out = 1
    for value in shape:
        out *= int(value)
    return out


def _size(count: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:,} bytes"


__all__ = [
    "DEFAULT_LIMIT",
    "LIMIT_VARIABLE",
    "check_in_memory",
    "estimate_bytes",
    "memory_limit",
    "open_data",
]
