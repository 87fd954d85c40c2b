"""Class folders of PNGs: exactly what ``habactl expand`` writes (habactl/interop/expand.py)."""

from __future__ import annotations

from pathlib import Path


def export(archive: Path, folder: Path, *, force: bool = False) -> list[str]:
    from habactl.interop.expand import expand_archive

    expand_archive(archive, folder, force=force, kind="png")
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
