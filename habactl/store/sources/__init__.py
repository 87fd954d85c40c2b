"""Opening any source habactl prepare reads: a name or a path to a Source."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from habactl.store.layout import StoreError
from habactl.store.sources.base import Header, Source

HF_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class Options:
    """How a source is read; the prepare command's flags."""

    root: str | None = None
    download: bool = False
    resolution: int | None = None
    mode: str | None = None
    workers: int = 0
    skip_bad: bool = False
    labels: str | None = None
    images_key: str | None = None
    labels_key: str | None = None

    def settings(self) -> dict:
        """What index.json records under ``settings`` (what shapes the pixels)."""
        from habactl.store.pixels import RESIZE_RULE

        return {
            "resolution": self.resolution,
            "resize": RESIZE_RULE if self.resolution else None,
            "mode": self.mode,
            "skip_bad": self.skip_bad,
        }


def open_source(spec: str, options: Options, scratch: Path) -> Source:
    """The Source for ``spec`` (a registry name or a path). ``scratch`` is the store's
    folder, for temporary files (a compressed .npz member is unpacked there)."""
    from habactl.data.registry import ALIASES, EMBEDDED, looks_like_path
    from habactl.data.torchvision_sources import SPECS
    from habactl.store.sources import files, memory

    key = ALIASES.get(spec.strip().lower(), spec.strip().lower())
    path = Path(spec).expanduser()
    if not looks_like_path(spec) and key in EMBEDDED:
        _only(spec, options, ("resolution", "mode"))
        return memory.from_embedded(key, options)
    if not looks_like_path(spec) and key in SPECS:
        _only(spec, options, ("resolution", "mode", "root", "download"))
        return memory.from_torchvision(key, options)
    suffix = path.suffix.lower()
    keys = {
        "images_key": options.images_key or "images",
        "labels_key": options.labels_key or "labels",
    }
    if suffix == ".npz":
        _only(spec, options, ("resolution", "mode", "images_key", "labels_key"))
        _exists(path)
        return files.open_npz(path, **keys, scratch=scratch, options=options)
    if suffix in (".h5", ".hdf5"):
        _only(spec, options, ("resolution", "mode", "images_key", "labels_key"))
        _exists(path)
        return files.open_hdf5(path, **keys, options=options)
    if suffix == ".npy":
        _only(spec, options, ("resolution", "mode", "labels"))
        _exists(path)
        return files.open_npy(path, options=options)
    if suffix == ".parquet" or (path.is_dir() and _is_hf(path)):
        _only(spec, options, ("resolution", "mode"))
        from habactl.store.sources.hf import open_hf

        return open_hf(path, options=options, scratch=scratch)
    if path.is_dir():
        if any((path / f"{name}.npy").is_file() for name in ("images", "x_train")):
            _only(spec, options, ("resolution", "mode"))
            return files.open_npy(path, options=options)
        _only(spec, options, ("resolution", "mode", "workers", "skip_bad"))
        from habactl.store.sources.folder import FolderSource

        return FolderSource(
            path,
            mode=options.mode,
            resolution=options.resolution,
            workers=options.workers,
            skip_bad=options.skip_bad,
        )
    if path.exists():
        raise StoreError(
            f"{path}: unsupported file type; use a folder of class folders, .npz, .npy, "
            f".h5/.hdf5, .parquet or a saved Hugging Face dataset folder"
        )
    from habactl.data import available_sources

    raise StoreError(
        f"unknown data source {spec!r}: not a registry name ({', '.join(available_sources())}) "
        f"and no such file or folder"
    )


# Flags and the kinds they apply to; `workers` is never refused (it has a default).
_FLAGS = {
    "root": "--root",
    "download": "--download",
    "skip_bad": "--skip-bad",
    "labels": "--labels",
    "images_key": "--images-key",
    "labels_key": "--labels-key",
}


def _only(spec: str, options: Options, allowed: tuple[str, ...]) -> None:
    for name, flag in _FLAGS.items():
        if name not in allowed and getattr(options, name):
            raise StoreError(f"{flag} does not apply to {spec}")


def _is_hf(folder: Path) -> bool:
    """A save_to_disk folder, or Parquet files (at the top or under data/)."""
    if any((folder / name).is_file() for name in HF_FILES):
        return True
    return any(folder.glob("*.parquet")) or any(folder.glob("data/*.parquet"))


def _exists(path: Path) -> None:
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not a {path.suffix.lower()} file")
    if not path.is_file():
        raise StoreError(f"{path}: no such file")


def file_identity(path: Path) -> dict:
    """What tells a file apart from an edited one without reading it."""
    stat = path.stat()
    return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


__all__ = ["Header", "Options", "Source", "file_identity", "open_source"]
