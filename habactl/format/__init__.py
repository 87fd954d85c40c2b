"""The .haba container: one safetensors file whose metadata is one JSON manifest.

The names below load on first use, so that reading a header (`habactl inspect`) never
imports the writer, and with it torch.
"""

from __future__ import annotations

from habactl.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "writer": ["save_archive", "save_legacy_archive"],
        "reader": ["open_archive", "verify_archive", "verify_report", "Archive"],
        "view": ["Manifest"],
        "errors": ["ArchiveError"],
        "limits": ["Limits", "DEFAULT_LIMITS"],
        "account": ["storage_account"],
        "manifest": ["FORMAT_VERSION", "canonical_json"],
    },
)
