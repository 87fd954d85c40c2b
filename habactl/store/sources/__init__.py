"""Opening any source habactl prepare reads: a name or a path to a Source."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from habactl.store.sources.base import Header, Source


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
    """The Source for ``spec`` (a registry name or a path). ``scratch`` is a folder for
    temporary files (a compressed .npz member is unpacked there)."""
    from habactl.store.sources.memory import from_data_source

    return from_data_source(spec, options)


def file_identity(path: Path) -> dict:
    """What tells a file apart from an edited one without reading it."""
    stat = path.stat()
    return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


__all__ = ["Header", "Options", "Source", "file_identity", "open_source"]
