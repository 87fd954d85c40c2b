"""open_archive: the header first (bounded, validated), tensors on demand.

The header is read and parsed here, not by safetensors, so that its size is bounded
before anything is allocated and every problem becomes an ``ArchiveError``.
``safe_open`` then serves the tensor bytes lazily. The checks on the header and on
tensor values are shared with the writer, which runs them on its own output.
"""

from __future__ import annotations

import hmac
import os
import stat
import struct
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import torch

from habactl.format.digest import DTYPE_NAMES, tensor_sha256, tensors_content_digest
from habactl.format.errors import ArchiveError, quote
from habactl.format.limits import DEFAULT_LIMITS, Limits
from habactl.format.manifest import Plan, parse_json, validate_manifest

# Bytes per element of every dtype safetensors can declare; others are refused.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
}
_MAX_NDIM = 8


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
        raise ArchiveError("header: no __metadata__ (a plain safetensors file, not a .haba archive)")
    if not isinstance(metadata, dict) or set(metadata) != {"haba"}:
        keys = sorted(metadata) if isinstance(metadata, dict) else metadata
        raise ArchiveError(f"header: __metadata__ must hold exactly one key 'haba', found {quote(keys)}")
    if not isinstance(metadata["haba"], str):
        raise ArchiveError("header: __metadata__['haba'] is not a string")
    if len(header) > limits.max_tensors:
        raise ArchiveError(f"header: {len(header)} tensors, allowed {limits.max_tensors}")
    entries = {name: _entry(name, value) for name, value in header.items()}
    _check_layout(entries, data_size)
    return metadata["haba"], entries


def _entry(name: str, value: Any) -> Entry:
    where = f"tensor {quote(name)}"
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise ArchiveError(f"{where}: header entry must have exactly dtype, shape, data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise ArchiveError(f"{where}: unknown dtype {quote(dtype)}")
    if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM and all(_is_count(d) for d in shape)):
        raise ArchiveError(f"{where}: shape {quote(shape)} is not a list of at most {_MAX_NDIM} sizes")
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


def _check_layout(entries: dict[str, Entry], data_size: int) -> None:
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


def check_manifest(text: str, entries: dict[str, Entry], limits: Limits) -> tuple[dict[str, Any], Plan]:
    """Parse and validate the manifest, and match it against the tensors present."""
    manifest = parse_json(text, "manifest")
    plan = validate_manifest(manifest, limits)
    check_tensor_set(plan, entries)
    for name in sorted(plan.tensors):
        recorded = manifest["tensors"].get(name)
        if recorded is None:
            raise ArchiveError(f"manifest: tensors: no entry for tensor {quote(name)}")
        if recorded["dtype"] != entries[name].dtype or tuple(recorded["shape"]) != entries[name].shape:
            raise ArchiveError(
                f"tensor {quote(name)}: manifest records {recorded['dtype']} {recorded['shape']}, "
                f"the file holds {entries[name].dtype} {list(entries[name].shape)}"
            )
    for name in sorted(set(manifest["tensors"]) - set(plan.tensors)):
        raise ArchiveError(f"manifest: tensors: entry {quote(name)} names no tensor of the archive")
    return manifest, plan


def check_tensor_set(plan: Plan, entries: dict[str, Entry]) -> None:
    """The tensors present must be exactly those the manifest implies."""
    for name in sorted(plan.tensors):
        if name not in entries:
            raise ArchiveError(f"tensor {quote(name)}: missing (the manifest implies it)")
    for name in sorted(entries):
        if name not in plan.tensors:
            raise ArchiveError(f"tensor {quote(name)}: not described by the manifest")
    for name, (dtype, shape) in sorted(plan.tensors.items()):
        entry = entries[name]
        if entry.dtype != dtype or entry.shape != shape:
            raise ArchiveError(
                f"tensor {quote(name)}: is {entry.dtype} {list(entry.shape)}, "
                f"the manifest implies {dtype} {list(shape)}"
            )


# --- values --------------------------------------------------------------------------


def check_values(name: str, tensor: torch.Tensor, plan: Plan) -> None:
    """Content rules: finite floats, labels in range and in class order."""
    where = f"tensor {quote(name)}"
    if tensor.is_floating_point():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ArchiveError(f"{where}: {bad} values are NaN or infinite")
    if name != "labels":
        return
    if plan.label_kind == "soft":
        negative = int((tensor < 0).sum())
        if negative:
            raise ArchiveError(f"{where}: {negative} soft label values are negative")
        return
    if tensor.numel() == 0:
        return
    low, high = int(tensor.min()), int(tensor.max())
    if low < 0 or high >= plan.classes:
        index = int(((tensor < 0) | (tensor >= plan.classes)).nonzero()[0, 0])
        raise ArchiveError(
            f"{where}: label {int(tensor[index])} at index {index} is out of range "
            f"(0 to {plan.classes - 1})"
        )
    counts = torch.bincount(tensor, minlength=plan.classes).tolist()
    if tuple(counts) != plan.per_class:
        first = next(i for i, (a, b) in enumerate(zip(counts, plan.per_class)) if a != b)
        raise ArchiveError(
            f"{where}: class {first} has {counts[first]} labels, bases.per_class says "
            f"{plan.per_class[first]}"
        )
    # Bases are class-sorted; hard labels must say so (the storage account relies on it).
    if bool((tensor[1:] < tensor[:-1]).any()):
        raise ArchiveError(f"{where}: labels are not sorted by class")


# --- the archive ---------------------------------------------------------------------


class Archive:
    """An open .haba file: the validated manifest, tensors read on first use."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        plan: Plan,
        entries: dict[str, Entry],
        handle: Any,
        verify: bool,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.plan = plan
        self.verify = verify
        self._entries = entries
        self._handle = handle
        self._verified: set[str] = set()
        self._label = path.name or str(path)

    def names(self) -> list[str]:
        """Tensor names, sorted."""
        return sorted(self._entries)

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor (a fresh copy); checked on first load when verify is on."""
        if name not in self._entries:
            raise ArchiveError(f"tensor {quote(name)}: no such tensor in the archive", self._label)
        if self._handle is None:
            raise ArchiveError("archive is closed", self._label)
        try:
            tensor = self._handle.get_tensor(name)
        except Exception as error:  # safetensors raises its own types
            raise ArchiveError(f"tensor {quote(name)}: cannot be read ({error})", self._label) from None
        entry = self._entries[name]
        if DTYPE_NAMES.get(tensor.dtype) != entry.dtype or tuple(tensor.shape) != entry.shape:
            # The file changed between our header check and safe_open's.
            raise ArchiveError(f"tensor {quote(name)}: changed while open", self._label)
        if self.verify and name not in self._verified:
            expected = self.manifest["tensors"][name]["sha256"]
            if not hmac.compare_digest(tensor_sha256(tensor), expected):
                raise ArchiveError(f"tensor {quote(name)}: sha256 mismatch (data damaged)", self._label)
            try:
                check_values(name, tensor, self.plan)
            except ArchiveError as error:
                raise error.at(self._label) from None
            self._verified.add(name)
        return tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        """All tensors; with verify on, each one and the content digest are checked."""
        loaded = {name: self.tensor(name) for name in self.names()}
        if self.verify:
            check_content_digest(self.manifest, loaded, self._label)
        return loaded

    def close(self) -> None:
        self._handle = None  # safe_open unmaps when its last reference goes

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Archive({str(self.path)!r}, tensors={len(self._entries)})"


def check_content_digest(manifest: dict[str, Any], tensors: dict[str, torch.Tensor], label: str) -> None:
    """The manifest's content_digest must match the tensors."""
    if not hmac.compare_digest(tensors_content_digest(tensors), manifest["content_digest"]):
        raise ArchiveError("content_digest mismatch (manifest edited or damaged)", label)


def open_archive(path: str | os.PathLike[str], *, verify: bool = True,
                 limits: Limits = DEFAULT_LIMITS) -> Archive:
    """Open and validate the header of a .haba file; tensors are read on demand."""
    path = Path(path)
    try:
        return _open(path, verify, limits)
    except ArchiveError as error:
        raise error.at(path.name or str(path)) from None


def _open(path: Path, verify: bool, limits: Limits) -> Archive:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ArchiveError("no such file") from None
    except OSError as error:
        raise ArchiveError(f"cannot read: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArchiveError("not a regular file")
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            length = header_length(file.read(8), size, limits)
            raw = file.read(length)
    except OSError as error:
        raise ArchiveError(f"cannot read: {error.strerror or error}") from None
    if len(raw) != length:
        raise ArchiveError("header: file shrank while reading (truncated)")
    text, entries = parse_header(raw, size - 8 - length, limits)
    manifest, plan = check_manifest(text, entries, limits)
    handle = _safe_open(path, text, entries)
    return Archive(path, manifest, plan, entries, handle, verify)


def _safe_open(path: Path, text: str, entries: dict[str, Entry]) -> Any:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        same = handle.metadata() == {"haba": text} and set(handle.keys()) == set(entries)
    except Exception as error:  # safetensors raises its own types
        raise ArchiveError(f"safetensors refused the file ({error})") from None
    if not same:
        raise ArchiveError("file changed while opening")
    return handle


def verify_archive(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Every problem found in the file (each damaged tensor named); [] when intact."""
    try:
        archive = open_archive(path, verify=True, limits=limits)
    except ArchiveError as error:
        return [str(error)]
    problems: list[str] = []
    loaded: dict[str, torch.Tensor] = {}
    with archive:
        for name in archive.names():
            try:
                loaded[name] = archive.tensor(name)
            except ArchiveError as error:
                problems.append(str(error))
        if not problems:
            try:
                check_content_digest(archive.manifest, loaded, archive.path.name)
            except ArchiveError as error:
                problems.append(str(error))
    return problems


__all__ = ["Archive", "open_archive", "verify_archive"]
