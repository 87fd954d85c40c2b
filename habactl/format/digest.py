"""Per-tensor sha256 and the content digest (framing in format/SPEC.md §5)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

import numpy as np
import torch

# Domain separation: a content digest can never equal the sha256 of some other
# byte string that happens to share the framing.
_CONTENT_TAG = b"haba-content-digest-v1\x00"

# safetensors dtype names of the torch dtypes an archive may hold.
DTYPE_NAMES: dict[torch.dtype, str] = {torch.float32: "F32", torch.int64: "I64"}


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes as stored: C order, little-endian (no copy on x86/ARM)."""
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    # A flat uint8 view: memoryview.cast refuses zero-size arrays.
    return memoryview(array.reshape(-1).view(np.uint8))


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Lowercase hex sha256 of the tensor's stored bytes."""
    return hashlib.sha256(raw_bytes(tensor)).hexdigest()


def content_digest(items: Iterable[tuple[str, str, Sequence[int], bytes | memoryview]]) -> str:
    """``sha256:<hex>`` over (name, dtype, shape, bytes) of every tensor, in name order.

    Every field is length-prefixed (u64 little-endian) so that no two different
    archives frame to the same byte stream.
    """
    ordered = sorted(items, key=lambda item: item[0])
    hasher = hashlib.sha256(_CONTENT_TAG)
    hasher.update(_u64(len(ordered)))
    for name, dtype, shape, data in ordered:
        name_bytes = name.encode("utf-8")
        dtype_bytes = dtype.encode("ascii")
        hasher.update(_u64(len(name_bytes)) + name_bytes)
        hasher.update(_u64(len(dtype_bytes)) + dtype_bytes)
        hasher.update(_u64(len(shape)) + b"".join(_u64(d) for d in shape))
        hasher.update(_u64(len(data)))
        hasher.update(data)
    return "sha256:" + hasher.hexdigest()


def tensors_content_digest(tensors: dict[str, torch.Tensor]) -> str:
    """content_digest of a name -> tensor mapping (F32 / I64 tensors only)."""
    return content_digest(
        (name, DTYPE_NAMES[t.dtype], tuple(t.shape), raw_bytes(t)) for name, t in tensors.items()
    )
