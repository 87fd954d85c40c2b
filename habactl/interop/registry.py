"""The import and export kinds, by name; torch-free, so the CLI can list them cheaply."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from habactl.errors import HabaError

# kind -> (module, function, one line for --help)
IMPORTERS: dict[str, tuple[str, str, str]] = {
    "mtt": (
        "mtt_layout",
        "read",
        "images_best.pt + labels_best.pt (+ syn_lr/lr_best.pt): MTT, DATM, FreD",
    ),
    "haba-official": (
        "haba_official",
        "read",
        "the HaBa authors' images_best.pt + weights_best.pt",
    ),
    "dc": ("dc", "read", "res_*.pt of the DC / DSA / DM code: 'data' lists (images, labels)"),
    "idc": ("idc", "read", "IDC's data.pt, (images, targets); --factor f unpacks multi-formation"),
    "npz": ("arrays", "read", "your own .npz / .safetensors / .pt of images, labels, optional lr"),
    "dd-ranking": ("mtt_layout", "read", "images.pt + labels.pt + lr.pt as DD-Ranking takes them"),
}
EXPORTERS: dict[str, tuple[str, str, str]] = {
    "dd-ranking": (
        "ddranking",
        "export",
        "images.pt, labels.pt, lr.pt + the storage-equivalent IPC",
    ),
    "mtt": ("mtt_layout", "export", "images_best.pt, labels_best.pt, lr_best.pt (expanded)"),
    "imagefolder": (
        "imagefolder",
        "export",
        "class folders of PNGs (what `habactl expand` writes)",
    ),
}


def _lookup(table: dict[str, tuple[str, str, str]], kind: str, what: str) -> Callable[..., Any]:
    key = kind.strip().lower()
    if key not in table:
        raise HabaError(f"unknown {what} kind {kind!r} (known: {', '.join(table)})")
    module, function, _ = table[key]
    return getattr(importlib.import_module(f"habactl.interop.{module}"), function)


def importer(kind: str) -> Callable[..., Any]:
    """The reader of layout ``kind``: ``read(files, options) -> Imported``."""
    return _lookup(IMPORTERS, kind, "import")


def exporter(kind: str) -> Callable[..., Any]:
    """The writer of layout ``kind``: ``export(archive_path, folder, force=...) -> list[str]``."""
    return _lookup(EXPORTERS, kind, "export")
