"""The checks a reader and the writer share (format/SPEC.md §1, §2, §6), in one place.

The reader runs them on a file, the writer on the bytes it is about to write, so the
writer can never produce an archive the reader refuses. Nothing here imports torch or a
codec: tensors are checked through their own methods, and the stage registry is passed
in (``stages``), as ``validate_manifest`` takes it.
"""

from __future__ import annotations

import hmac
import struct
from typing import Any, NamedTuple

from habactl.format.account import DTYPE_SIZES  # bytes per element; others are refused
from habactl.format.digest import manifest_digest
from habactl.format.errors import ArchiveError, quote
from habactl.format.limits import Limits
from habactl.format.manifest import Layout, StageLookup, parse_json, validate_manifest

MAX_NDIM = 8  # dimensions of one tensor (SPEC §1)


class Entry(NamedTuple):
    """One tensor as the safetensors header (or the writer's input) describes it."""

    dtype: str
    shape: tuple[int, ...]
    begin: int = 0  # data offsets, relative to the end of the header
    end: int = 0


# --- header --------------------------------------------------------------------------


def header_length(first8: bytes, file_size: int, limits: Limits) -> int:
    """The declared header length, refused if hostile before anything is read."""
    if len(first8) < 8:
        raise ArchiveError(f"file is {file_size} bytes, too short to be an archive (truncated?)")
    (length,) = struct.unpack("<Q", first8)
    if length > limits.max_header_bytes:
        raise ArchiveError(
            f"header: declares {length} bytes, more than the limit {limits.max_header_bytes} "
            "(damaged, hostile, or not a .haba file)"
        )
    if 8 + length > file_size:
        raise ArchiveError(
            f"header: declares {length} bytes but only {file_size - 8} follow (truncated)"
        )
    return length


def parse_header(raw: bytes, data_size: int, limits: Limits) -> tuple[str, dict[str, Entry]]:
    """(manifest JSON text, tensor entries) of a safetensors header, fully checked."""
    if not raw.startswith(b"{"):
        raise ArchiveError("header: does not start with '{' (not a safetensors file)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveError("header: not UTF-8 (damaged, or not a .haba file)") from None
    header = parse_json(text, "header")
    if not isinstance(header, dict):
        raise ArchiveError("header: not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        raise ArchiveError(
            "header: no __metadata__ (a plain safetensors file, not a .haba archive)"
        )
    if not isinstance(metadata, dict) or set(metadata) != {"haba"}:
        keys = sorted(metadata) if isinstance(metadata, dict) else metadata
        raise ArchiveError(
            f"header: __metadata__ must hold exactly one key 'haba', found {quote(keys)}"
        )
    if not isinstance(metadata["haba"], str):
        raise ArchiveError("header: __metadata__['haba'] is not a string")
    if len(header) > limits.max_tensors:
        raise ArchiveError(f"header: {len(header)} tensors, allowed {limits.max_tensors}")
    entries = {name: _entry(name, value) for name, value in header.items()}
    _check_tiling(entries, data_size)
    return metadata["haba"], entries


def _entry(name: str, value: Any) -> Entry:
    where = f"tensor {quote(name)}"
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise ArchiveError(f"{where}: header entry must have exactly dtype, shape, data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise ArchiveError(f"{where}: unknown dtype {quote(dtype)}")
    if not (
        isinstance(shape, list) and len(shape) <= MAX_NDIM and all(_is_count(d) for d in shape)
    ):
        raise ArchiveError(
            f"{where}: shape {quote(shape)} is not a list of at most {MAX_NDIM} sizes"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise ArchiveError(f"{where}: data_offsets {quote(offsets)} is not [begin, end]")
    begin, end = offsets
    nbytes = DTYPE_SIZES[dtype]
    for d in shape:
        nbytes *= d
    if end < begin or end - begin != nbytes:
        raise ArchiveError(
            f"{where}: data_offsets [{begin}, {end}] do not hold {nbytes} bytes of {dtype} {shape}"
        )
    return Entry(dtype, tuple(shape), begin, end)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tiling(entries: dict[str, Entry], data_size: int) -> None:
    # The data section must be tiled exactly: no gaps, no overlaps, nothing after the
    # end. Overlaps would let two tensors alias, gaps would hide unchecked bytes.
    position = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            raise ArchiveError(
                f"tensor {quote(name)}: data starts at byte {entry.begin}, expected {position} "
                "(overlapping or gapped data)"
            )
        position = entry.end
    if position > data_size:
        last = max(entries, key=lambda n: entries[n].end)
        raise ArchiveError(
            f"tensor {quote(last)}: data ends at byte {position} but the file holds "
            f"{data_size} data bytes (truncated)"
        )
    if position < data_size:
        raise ArchiveError(f"header: {data_size - position} bytes after the last tensor")


def check_manifest(
    text: str,
    entries: dict[str, Entry],
    limits: Limits,
    stages: StageLookup,
    *,
    digest: bool = True,
) -> tuple[dict[str, Any], Layout]:
    """Parse and validate the manifest, match it against the tensors present, then (with
    ``digest``, a verifying open) check its manifest digest, when it carries one.

    The digest comes last so that a manifest a field check refuses gets that check's
    specific message; a damaged manifest that passes them all is caught here."""
    manifest = parse_json(text, "manifest")
    layout = validate_manifest(manifest, limits, stages=stages)
    check_tensor_set(layout, entries)
    for name in sorted(layout.tensors):
        recorded = manifest["tensors"].get(name)
        if recorded is None:
            raise ArchiveError(f"manifest: tensors: no entry for tensor {quote(name)}")
        entry = entries[name]
        if recorded["dtype"] != entry.dtype or tuple(recorded["shape"]) != entry.shape:
            raise ArchiveError(
                f"tensor {quote(name)}: manifest records {recorded['dtype']} {recorded['shape']}, "
                f"the file holds {entries[name].dtype} {list(entries[name].shape)}"
            )
    for name in sorted(set(manifest["tensors"]) - set(layout.tensors)):
        raise ArchiveError(f"manifest: tensors: entry {quote(name)} names no tensor of the archive")
    if digest:
        check_manifest_digest(manifest)
    return manifest, layout


def check_manifest_digest(manifest: dict[str, Any]) -> None:
    """A ``manifest_digest`` (required from 1.2 on, see ``validate_manifest``) must match
    the manifest's other fields; an older manifest without one has nothing to check."""
    recorded = manifest.get("manifest_digest")
    if recorded is None:
        return
    if not hmac.compare_digest(manifest_digest(manifest), recorded):
        raise ArchiveError("manifest: digest mismatch (manifest damaged)")


def check_tensor_set(layout: Layout, entries: dict[str, Entry]) -> None:
    """The tensors present must be exactly those the manifest implies."""
    for name in sorted(layout.tensors):
        if name not in entries:
            raise ArchiveError(f"tensor {quote(name)}: missing (the manifest implies it)")
    for name in sorted(entries):
        if name not in layout.tensors:
            raise ArchiveError(f"tensor {quote(name)}: not described by the manifest")
    for name, (dtype, shape) in sorted(layout.tensors.items()):
        entry = entries[name]
        if entry.dtype != dtype or entry.shape != shape:
            raise ArchiveError(
                f"tensor {quote(name)}: is {entry.dtype} {list(entry.shape)}, "
                f"the manifest implies {dtype} {list(shape)}"
            )


# --- values --------------------------------------------------------------------------


def check_values(name: str, tensor: Any, layout: Layout) -> None:
    """Content rules: finite floats, labels in range and in class order.

    ``tensor`` is a numpy array or a torch tensor; the checks run in numpy, so that
    `habactl verify` needs no torch."""
    import numpy as np

    where = f"tensor {quote(name)}"
    if hasattr(tensor, "detach"):  # a torch tensor (the writer's): numpy has no bfloat16
        tensor = tensor.detach().cpu()
        tensor = tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor
    array = np.asarray(tensor)
    if np.issubdtype(array.dtype, np.floating):
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise ArchiveError(f"{where}: {bad} values are NaN or infinite")
    rule = layout.rules.get(name)
    problem = rule(array) if rule is not None else None
    if problem:  # a stage's own rule (codecs/*.md), e.g. a positive quantisation scale
        raise ArchiveError(f"{where}: {problem}")
    if name != "labels":
        return
    if layout.label_kind == "soft":
        negative = int((array < 0).sum())
        if negative:
            raise ArchiveError(f"{where}: {negative} soft label values are negative")
        return
    if array.size == 0:
        return
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= layout.classes:
        index = int(np.flatnonzero((array < 0) | (array >= layout.classes))[0])
        raise ArchiveError(
            f"{where}: label {int(array[index])} at index {index} is out of range "
            f"(0 to {layout.classes - 1})"
        )
    counts = np.bincount(array, minlength=layout.classes).tolist()
    if tuple(counts) != layout.per_class:
        first = next(i for i, (a, b) in enumerate(zip(counts, layout.per_class)) if a != b)
        raise ArchiveError(
            f"{where}: class {first} has {counts[first]} labels, bases.per_class says "
            f"{layout.per_class[first]}"
        )
    # Bases are class-sorted; hard labels must say so (the storage account relies on it).
    if bool((array[1:] < array[:-1]).any()):
        raise ArchiveError(f"{where}: labels are not sorted by class")


__all__ = [
    "DTYPE_SIZES",
    "MAX_NDIM",
    "Entry",
    "header_length",
    "parse_header",
    "check_manifest",
    "check_manifest_digest",
    "check_tensor_set",
    "check_values",
]
