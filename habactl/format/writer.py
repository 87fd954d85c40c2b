"""save_archive: deterministic bytes, checked like a reader would, written atomically."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from habactl.codecs.spec import describe_pipeline, format_version_for, legacy_format_version_for
from habactl.format.checks import (
    Entry,
    check_manifest,
    check_tensor_set,
    check_values,
    header_length,
    parse_header,
)
from habactl.format.digest import (
    dtype_name,
    manifest_digest,
    tensor_sha256,
    tensors_content_digest,
)
from habactl.format.errors import ArchiveError, quote
from habactl.format.labels import CROPS_MINOR, LABELS_MINOR, required_minor
from habactl.format.limits import DEFAULT_LIMITS, Limits
from habactl.format.manifest import (
    FORMAT_NAME,
    WRITER_FIELDS,
    canonical_json,
    parse_json,
    validate_manifest,
)


def save_archive(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    manifest: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Validate, then write ``path`` atomically; return it.

    ``manifest`` holds every field except ``tensors``, ``content_digest`` and
    ``manifest_digest``, which are computed here (values given for them are ignored).
    ``format`` and ``format_version`` default to this writer's ("haba", "1.2", or "1.3"
    when the labels use a 1.3 form or the provenance records a teacher); another
    ``format_version`` is refused.
    """
    return _save(path, tensors, manifest, overwrite, legacy=False)


def save_legacy_archive(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    manifest: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write an archive of format 1.0 or 1.1, byte for byte as habactl wrote them before
    1.2: no manifest digest, and the lowest version that has the pipeline's stages.

    Only for reproducing the kept golden files (format/golden/make_golden.py and its
    test): every new archive is 1.2 (``save_archive``), whose manifest is covered.
    """
    return _save(path, tensors, manifest, overwrite, legacy=True)


def _save(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    manifest: Mapping[str, Any],
    overwrite: bool,
    legacy: bool,
) -> Path:
    path = Path(path)
    try:
        data = archive_bytes(tensors, manifest, legacy=legacy)
        _write_atomically(path, data, overwrite)
    except ArchiveError as error:
        raise error.at(path.name or str(path)) from None
    return path


def archive_bytes(
    tensors: Mapping[str, torch.Tensor],
    manifest: Mapping[str, Any],
    limits: Limits = DEFAULT_LIMITS,
    *,
    legacy: bool = False,
) -> bytes:
    """The archive's bytes: a pure function of (tensors, manifest).

    ``legacy``: the format 1.0/1.1 bytes (see ``save_legacy_archive``)."""
    if not isinstance(manifest, Mapping):
        raise ArchiveError(f"manifest: must be a mapping, got {type(manifest).__name__}")
    # A canonical-JSON round trip: a deep copy with tuples as lists, and the proof
    # that the manifest is representable at all.
    m = parse_json(canonical_json(dict(manifest)), "manifest")
    for field in WRITER_FIELDS:
        m.pop(field, None)
    m.setdefault("format", FORMAT_NAME)
    # Writers emit 1.2, the version with the manifest digest (format/SPEC.md §7); before
    # 1.2 they emitted the lowest version that held the archive (1.0, or 1.1 with a
    # stage of 1.1), which the legacy path still reproduces.
    if legacy:
        version = legacy_format_version_for(m.get("pipeline"))
        why = "the lowest version that holds it, without a manifest digest"
    else:
        # 1.2, 1.3 for a labels form or a recorded teacher, 1.4 for per-crop labels
        # (format/SPEC.md §7)
        minor = max(int(format_version_for(m.get("pipeline")).split(".")[1]), required_minor(m))
        version = f"1.{minor}"
        why = "every archive now carries a manifest digest" + (
            f"; its labels need 1.{minor}" if minor in (LABELS_MINOR, CROPS_MINOR) else ""
        )
    m.setdefault("format_version", version)
    if m["format_version"] != version:
        raise ArchiveError(
            f"manifest: format_version {quote(m['format_version'])}: "
            f"this writer writes {version} for this archive ({why})"
        )
    layout = validate_manifest(m, limits, stages=describe_pipeline, written=False)

    stored = _prepare(tensors)
    check_tensor_set(layout, {name: _entry_of(t) for name, t in stored.items()})
    for name, tensor in stored.items():
        check_values(name, tensor, layout)
    m["tensors"] = {
        name: {"dtype": dtype_name(t), "shape": list(t.shape), "sha256": tensor_sha256(t)}
        for name, t in stored.items()
    }
    m["content_digest"] = tensors_content_digest(stored)
    if not legacy:  # last: it covers every other field, the two digests above included
        m["manifest_digest"] = manifest_digest(m)
    text = canonical_json(m)

    from safetensors.torch import save

    data = save(stored, metadata={"haba": text})
    _self_check(data, text, m, limits)
    return data


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, Mapping):
        raise ArchiveError(
            f"tensors: must be a mapping of name to tensor, got {type(tensors).__name__}"
        )
    stored: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ArchiveError(f"tensor {quote(name)}: must be a torch.Tensor named by a string")
        # A private contiguous CPU copy: no shared storage for safetensors to refuse,
        # and the caller cannot change it between hashing and writing.
        stored[name] = tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return stored


def _entry_of(tensor: torch.Tensor) -> Entry:
    return Entry(dtype_name(tensor) or str(tensor.dtype), tuple(tensor.shape))


def _self_check(data: bytes, text: str, manifest: dict[str, Any], limits: Limits) -> None:
    """Run the reader's header checks on our own output and hash the bytes as stored,
    so the writer can never produce a file the reader refuses."""
    length = header_length(data[:8], len(data), limits)
    parsed_text, entries = parse_header(data[8 : 8 + length], len(data) - 8 - length, limits)
    if parsed_text != text:
        raise ArchiveError("internal: safetensors altered the manifest")
    check_manifest(parsed_text, entries, limits, describe_pipeline)
    start = 8 + length
    for name, entry in entries.items():
        section = memoryview(data)[start + entry.begin : start + entry.end]
        digest = hashlib.sha256(section).hexdigest()
        if not hmac.compare_digest(digest, manifest["tensors"][name]["sha256"]):
            raise ArchiveError(f"internal: tensor {quote(name)} was stored differently than hashed")


# --- atomic write ----------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes, overwrite: bool) -> None:
    """Through habactl.runtime.atomic, the one atomic writer: temp file in the target folder,
    fsync, rename (a hard link when not overwriting), fsync the folder; mode from the
    umask. On any exception the temp file is removed and the target is untouched. A
    process killed outright (SIGKILL, power loss) can leave ``.<name>.tmp-<hex>``
    beside the target, never a partial file at the target path.
    """
    from habactl.runtime.atomic import OutputError, OutputExists, write_bytes

    folder = path.parent
    if not folder.is_dir():
        raise ArchiveError(f"folder {str(folder)!r} does not exist")
    try:
        write_bytes(path, data, overwrite=overwrite)
    except OutputExists:
        raise ArchiveError("already exists; pass overwrite=True to replace it") from None
    except OutputError as error:
        raise ArchiveError(f"cannot write: {error.reason} (folder {folder})") from None
