"""``load_source``: one entry point from a name or a path to a validated DataSource."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from habactl.data import embedded, files, folder
from habactl.data.base import DataError, DataSource, reason
from habactl.data.torchvision_sources import SPECS as TORCHVISION_SPECS
from habactl.data.torchvision_sources import load_torchvision

EMBEDDED: dict[str, Callable[[], DataSource]] = {
    "mnist-5k": embedded.mnist_5k,
    "digits": embedded.digits,
}
# Spellings people type for the same sets; the canonical name is what provenance records.
ALIASES = {
    "mnist5k": "mnist-5k",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
}
FILE_SUFFIXES = {".h5": files.load_hdf5, ".hdf5": files.load_hdf5, ".npz": files.load_npz}
FILE_OPTIONS = ("images_key", "labels_key")


def available_sources() -> list[str]:
    """Registry names, embedded (offline) first."""
    return list(EMBEDDED) + list(TORCHVISION_SPECS)


def load_source(
    spec: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    **options,
) -> DataSource:
    """A registry name (case-insensitive) or a path: directory -> ImageFolder,
    .h5/.hdf5 -> HDF5, .npz -> npz. ``root`` and ``download`` apply to the torchvision
    sources; ``images_key`` and ``labels_key`` to HDF5 and npz files.

    A spec that names a registry source is that source, even if a folder of that name
    exists; write ``./mnist`` for the folder.
    """
    text = os.fspath(spec)
    key = text.strip().lower()
    key = ALIASES.get(key, key)
    if key in EMBEDDED and not looks_like_path(text):
        _no_options(key, options)
        return EMBEDDED[key]()
    if key in TORCHVISION_SPECS and not looks_like_path(text):
        _no_options(key, options)
        return load_torchvision(key, root=root, download=download)
    path = Path(text).expanduser()
    loader = FILE_SUFFIXES.get(path.suffix.lower())
    if loader is not None:
        _check_options(text, options, FILE_OPTIONS)
        if path.is_dir():
            raise DataError(
                f"{path}: is a folder, not a {path.suffix.lower()} file; rename it "
                f"to use it as a folder of images"
            )
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return loader(path, **options)
    if path.is_dir():
        _no_options(text, options)
        try:
            return folder.load_folder(path)
        except OSError as exc:  # e.g. a class folder that may not be listed
            where = exc.filename or path
            raise DataError(f"{where}: cannot read ({exc.strerror or reason(exc)})") from exc
    if path.exists():
        raise DataError(f"{path}: unsupported file type; use a folder of images, .h5/.hdf5 or .npz")
    raise DataError(
        f"unknown data source {text!r}: not a registry name ({', '.join(available_sources())}) "
        f"and no such file or folder"
    )


def looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.startswith(("~", "."))


def _no_options(what: str, options: dict) -> None:
    _check_options(what, options, ())


def _check_options(what: str, options: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise DataError(f"{what}: unknown option(s) {', '.join(unknown)} (accepted: {accepted})")
