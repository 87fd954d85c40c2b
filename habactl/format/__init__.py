"""The .haba container: one safetensors file whose metadata is one JSON manifest."""

from habactl.format.account import storage_account
from habactl.format.errors import ArchiveError
from habactl.format.limits import DEFAULT_LIMITS, Limits
from habactl.format.manifest import FORMAT_VERSION, canonical_json
from habactl.format.reader import Archive, open_archive, verify_archive
from habactl.format.writer import save_archive

__all__ = ["save_archive", "open_archive", "verify_archive", "Archive", "ArchiveError", "Limits",
           "DEFAULT_LIMITS", "storage_account", "FORMAT_VERSION", "canonical_json"]
