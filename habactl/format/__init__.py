"""The .haba container: one safetensors file whose metadata is one JSON manifest.

The names below load on first use, so that reading a header (`habactl inspect`) never
imports the writer, and with it torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "save_archive": "writer",
    "save_legacy_archive": "writer",
    "open_archive": "reader",
    "verify_archive": "reader",
    "verify_report": "reader",
    "Archive": "reader",
    "Manifest": "view",
    "ArchiveError": "errors",
    "Limits": "limits",
    "DEFAULT_LIMITS": "limits",
    "storage_account": "account",
    "FORMAT_VERSION": "manifest",
    "canonical_json": "manifest",
}

__all__ = [
    "save_archive",
    "save_legacy_archive",
    "open_archive",
    "verify_archive",
    "verify_report",
    "Archive",
    "Manifest",
    "ArchiveError",
    "Limits",
    "DEFAULT_LIMITS",
    "storage_account",
    "FORMAT_VERSION",
    "canonical_json",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"habactl.format.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'habactl.format' has no attribute {name!r}")
