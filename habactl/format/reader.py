"""open_archive: the header first (bounded, validated), tensors on demand.

The header is read and parsed here, not by safetensors, so that its size is bounded
before anything is allocated and every problem becomes an ``ArchiveError``.
``safe_open`` then serves the tensor bytes lazily. The checks on the header and on
tensor values are shared with the writer, which runs them on its own output.

Torch-free: the header path needs the standard library only and the value checks
numpy, so that `habactl inspect` and `verify` answer at once; torch is imported when a
caller asks for tensors (``Archive.tensor``), never before.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from habactl.codecs.spec import describe_pipeline  # the pure description: no torch
from habactl.format.bfloat16 import BF16, read_bits, widen
from habactl.format.checks import (
    Entry,
    check_manifest,
    check_values,
    header_length,
    parse_header,
)
from habactl.format.digest import dtype_name, tensor_sha256, tensors_content_digest
from habactl.format.errors import ArchiveError, quote
from habactl.format.labels import CROPS, decode_crop_labels, decode_labels
from habactl.format.limits import DEFAULT_LIMITS, Limits
from habactl.format.manifest import Layout
from habactl.format.view import Manifest

if TYPE_CHECKING:
    import numpy
    import torch

# The first bytes of files people mistake for archives: named, so that the error says
# what the file is instead of quoting a nonsense header length.
_OTHER_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a zip file"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x93NUMPY", "a .npy file"),
    (b"\x1f\x8b", "a gzip file"),
)


def check_not_other_format(first8: bytes) -> None:
    """Refuse a file whose first bytes name another format, or that reads as text."""
    for magic, what in _OTHER_FORMATS:
        if first8.startswith(magic):
            raise ArchiveError(f"not a .haba archive (it is {what})")
    # A header length is a little-endian u64 below 16 MiB: its last bytes are zeros.
    # Eight printable characters are the start of a text file, not a length.
    if len(first8) == 8 and all(32 <= b < 127 or b in (9, 10, 13) for b in first8):
        raise ArchiveError("not a .haba archive (it starts with text)")


# --- the archive ---------------------------------------------------------------------


class Archive:
    """An open .haba file: the validated manifest, tensors read on first use.

    ``info`` is the manifest as typed values (habactl.format.view); ``manifest`` is the
    parsed JSON itself, for showing or copying it whole."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        layout: Layout,
        entries: dict[str, Entry],
        text: str,
        verify: bool,
        data_start: int = 0,
    ) -> None:
        self.path = path
        self._data_start = data_start  # file offset of the data section (8 + header)
        self.manifest = manifest
        self.info = Manifest.from_json(manifest)
        self.layout = layout
        self.verify = verify
        self._entries = entries
        self._text = text  # the manifest as read, to check safe_open sees the same file
        self._handle: Any = None  # safe_open's, opened on the first tensor read
        self._closed = False
        self._verified: set[str] = set()
        self._label = path.name or str(path)

    @property
    def manifest_checked(self) -> bool:
        """Whether the manifest itself was checked against its digest: a verifying open
        of a 1.2 (or later) archive. 1.0 and 1.1 archives carry no manifest digest."""
        return self.verify and "manifest_digest" in self.manifest

    def names(self) -> list[str]:
        """Tensor names, sorted."""
        return sorted(self._entries)

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor (a fresh copy); checked on first load when verify is on."""
        return _to_torch(self._stored(name), self._entries[name].dtype)

    def array(self, name: str) -> numpy.ndarray:
        """One tensor as a numpy array (a fresh copy); checked on first load when
        verify is on. Needs no torch. numpy has no bfloat16: a ``BF16`` tensor comes
        back widened to float32 (exactly the same values)."""
        stored = self._stored(name)
        return widen(stored) if self._entries[name].dtype == BF16 else stored

    def _stored(self, name: str) -> numpy.ndarray:
        """The tensor as stored (BF16 as its raw uint16 bits), checked on first load."""
        if name not in self._entries:
            raise ArchiveError(f"tensor {quote(name)}: no such tensor in the archive", self._label)
        if self._closed:
            raise ArchiveError("archive is closed", self._label)
        entry = self._entries[name]
        if entry.dtype == BF16:
            tensor = self._read_bfloat16(name, entry)
        else:
            tensor = self._read(name)
            if dtype_name(tensor) != entry.dtype or tuple(tensor.shape) != entry.shape:
                # The file changed between our header check and safe_open's.
                raise ArchiveError(f"tensor {quote(name)}: changed while open", self._label)
        if self.verify and name not in self._verified:
            expected = self.manifest["tensors"][name]["sha256"]
            if not hmac.compare_digest(tensor_sha256(tensor), expected):
                raise ArchiveError(
                    f"tensor {quote(name)}: sha256 mismatch (data damaged)", self._label
                )
            values = widen(tensor) if entry.dtype == BF16 else tensor
            try:
                check_values(name, values, self.layout)
            except ArchiveError as error:
                raise error.at(self._label) from None
            self._verified.add(name)
        return tensor

    def _read(self, name: str) -> numpy.ndarray:
        if self._handle is None:
            # Opened here, not in open_archive: safetensors' numpy framework imports numpy,
            # and reading a header (inspect) needs neither.
            try:
                self._handle = _safe_open(self.path, self._text, self._entries)
            except ArchiveError as error:
                raise error.at(self._label) from None
        try:
            return self._handle.get_tensor(name)
        except Exception as error:  # safetensors raises its own types
            raise ArchiveError(
                f"tensor {quote(name)}: cannot be read ({error})", self._label
            ) from None

    def _read_bfloat16(self, name: str, entry: Entry) -> numpy.ndarray:
        # safetensors' numpy framework refuses BF16: the bits are read here, at the
        # offsets the header check tied to the file's size.
        try:
            return read_bits(self.path, self._data_start + entry.begin, entry.shape)
        except (OSError, EOFError) as error:
            raise ArchiveError(
                f"tensor {quote(name)}: cannot be read ({error})", self._label
            ) from None

    def labels(self) -> torch.Tensor:
        """The labels as training uses them: hard labels (count,) int64, soft labels of
        any storage form (count, classes) float32 (format/SPEC.md §2.1)."""
        import torch

        return torch.from_numpy(self.label_array())

    def label_array(self) -> numpy.ndarray:
        """``labels()`` as a numpy array; needs no torch."""
        names = [n for n in self.names() if n in ("labels", "labels.scale", "labels.indices")]
        stored = {name: self._stored(name) for name in names}
        return decode_labels(stored, self.manifest["labels"], len(self.info.classes))

    def crop_arrays(self) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray] | None:
        """Per-crop labels (format 1.4) as numpy arrays, rows epoch-major: the boxes
        (rows, 4) float32 (centre x, centre y, width, height), the mirror flags (rows,)
        uint8 and the labels (rows, classes) float32; None when the archive has none."""
        import numpy as np

        if self.info.crop_epochs is None:
            return None
        stored = {n: self._stored(n) for n in self.names() if n.startswith(CROPS)}
        labels = decode_crop_labels(stored, self.manifest["labels"], len(self.info.classes))
        box = stored[CROPS + ".box"].astype(np.float32)
        return box, stored[CROPS + ".mirror"], labels

    def tensors(self) -> dict[str, torch.Tensor]:
        """All tensors; with verify on, each one and the content digest are checked."""
        return {
            name: _to_torch(stored, self._entries[name].dtype)
            for name, stored in self._stored_all().items()
        }

    def arrays(self) -> dict[str, numpy.ndarray]:
        """All tensors as numpy arrays (BF16 widened to float32), checked as ``tensors``
        checks them."""
        return {
            name: widen(stored) if self._entries[name].dtype == BF16 else stored
            for name, stored in self._stored_all().items()
        }

    def _stored_all(self) -> dict[str, numpy.ndarray]:
        loaded = {name: self._stored(name) for name in self.names()}
        if self.verify:
            check_content_digest(self.manifest, loaded, self._label)
        return loaded

    def close(self) -> None:
        self._handle = None  # safe_open unmaps when its last reference goes
        self._closed = True

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Archive({str(self.path)!r}, tensors={len(self._entries)})"


def check_content_digest(manifest: dict[str, Any], tensors: dict[str, Any], label: str) -> None:
    """The manifest's content_digest must match the tensors (as stored: BF16 as bits)."""
    dtypes = {name: manifest["tensors"][name]["dtype"] for name in tensors}
    digest = tensors_content_digest(tensors, dtypes)
    if not hmac.compare_digest(digest, manifest["content_digest"]):
        raise ArchiveError("content_digest mismatch (manifest edited or damaged)", label)


def open_archive(
    path: str | os.PathLike[str], *, verify: bool = True, limits: Limits = DEFAULT_LIMITS
) -> Archive:
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
    if stat.S_ISDIR(info.st_mode):
        raise ArchiveError("is a folder, not a .haba archive (not a regular file)")
    if not stat.S_ISREG(info.st_mode):
        raise ArchiveError("not a regular file")
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            first8 = file.read(8)
            check_not_other_format(first8)
            length = header_length(first8, size, limits)
            raw = file.read(length)
    except OSError as error:
        raise ArchiveError(f"cannot read: {error.strerror or error}") from None
    if len(raw) != length:
        raise ArchiveError("header: file shrank while reading (truncated)")
    text, entries = parse_header(raw, size - 8 - length, limits)
    manifest, layout = check_manifest(text, entries, limits, describe_pipeline, digest=verify)
    return Archive(path, manifest, layout, entries, text, verify, data_start=8 + length)


def _to_torch(stored: numpy.ndarray, dtype: str) -> torch.Tensor:
    """A stored array as a torch tensor of its stored dtype (BF16 from its bits)."""
    import torch

    tensor = torch.from_numpy(stored)
    return tensor.view(torch.bfloat16) if dtype == BF16 else tensor


def _safe_open(path: Path, text: str, entries: dict[str, Entry]) -> Any:
    from safetensors import safe_open

    try:
        # numpy, not "pt": opening with the torch framework imports torch.
        handle = safe_open(str(path), framework="numpy")
        same = handle.metadata() == {"haba": text} and set(handle.keys()) == set(entries)
    except Exception as error:  # safetensors raises its own types
        raise ArchiveError(f"safetensors refused the file ({error})") from None
    if not same:
        raise ArchiveError("file changed while opening")
    return handle


class VerifyReport(NamedTuple):
    """What ``verify_report`` found: the problems ([] when intact) and, for an archive
    that opened, its format version and whether its manifest was checked too."""

    problems: list[str]
    format_version: str | None = None
    manifest_checked: bool = False


def verify_archive(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Every problem found in the file (each damaged tensor named); [] when intact."""
    return verify_report(path, limits=limits).problems


def verify_report(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> VerifyReport:
    """Check the whole file: header, manifest (and its digest, from format 1.2 on), every
    tensor's sha256 and content rules, the content digest."""
    try:
        archive = open_archive(path, verify=True, limits=limits)
    except ArchiveError as error:
        return VerifyReport([str(error)])
    problems: list[str] = []
    loaded: dict[str, Any] = {}
    with archive:
        for name in archive.names():
            try:
                loaded[name] = archive._stored(name)
            except ArchiveError as error:
                problems.append(str(error))
        if not problems:
            try:
                check_content_digest(archive.manifest, loaded, archive.path.name)
            except ArchiveError as error:
                problems.append(str(error))
    return VerifyReport(problems, archive.manifest["format_version"], archive.manifest_checked)


__all__ = ["Archive", "VerifyReport", "open_archive", "verify_archive", "verify_report"]
