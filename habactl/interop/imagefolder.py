"""Class folders of PNGs: the same code path as ``habactl expand`` (cli/expand.py)."""

from __future__ import annotations

from pathlib import Path


def export(archive: Path, folder: Path, *, force: bool = False) -> list[str]:
    from habactl.atomic import check_target
    from habactl.cli.expand import write_png_folders
    from habactl.loader import HabaDataset

    check_target(folder, force)
    dataset = HabaDataset(archive)
    images, labels = dataset.tensors()
    write_png_folders(folder, dataset.test_transform().to_pixels(images), labels, dataset.classes)
    return sorted(p.name for p in folder.iterdir())
