"""Per-tensor sha256, the content digest and the manifest digest (format/SPEC.md §5).

Torch-free: the functions take numpy arrays or torch tensors, so that `habactl verify`
checks an archive with the standard library and numpy alone.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from habactl.format.manifest import canonical_json

# Domain separation: a content digest can never equal the sha256 of some other
# byte string that happens to share the framing, nor a manifest digest.
_CONTENT_TAG = b"haba-content-digest-v1\x00"
_MANIFEST_TAG = b"haba-manifest-digest-v1\x00"

# safetensors dtype names of the element types an archive may hold, keyed by the
# dtype's text in numpy ("float32") and in torch ("torch.float32"). numpy has no
# bfloat16: the torch-free reader keeps BF16 data as its raw uint16 bits and names the
# dtype from the header (format/bfloat16.py).
_NAMES = {
    "float32": "F32",
    "int64": "I64",
    "float16": "F16",
    "uint8": "U8",
    "bfloat16": "BF16",
    "uint16": "U16",  # top-k label indices (1.3)
    "uint32": "U32",
}


def dtype_name(tensor: Any) -> str | None:
    """The safetensors dtype name of a numpy array or torch tensor; None if not storable."""
    text = str(tensor.dtype)
    return _NAMES.get(text.removeprefix("torch."))


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def raw_bytes(tensor: Any) -> memoryview:
    """The bytes as stored: C order, little-endian (no copy on x86/ARM).

    `tensor` is a numpy array or a torch tensor (on any device)."""
    import numpy as np

    if hasattr(tensor, "detach"):  # a torch tensor
        tensor = tensor.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # numpy cannot hold it: its bits
            import torch  # already loaded: the tensor is one of its

            tensor = tensor.view(torch.int16)
        tensor = tensor.numpy()
    array = np.ascontiguousarray(tensor)
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    # A flat uint8 view: memoryview.cast refuses zero-size arrays.
    return array.reshape(-1).view(np.uint8).data


def tensor_sha256(tensor: Any) -> str:
    """Lowercase hex sha256 of the stored bytes of a numpy array or torch tensor."""
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


def tensors_content_digest(
    tensors: Mapping[str, Any], dtypes: Mapping[str, str] | None = None
) -> str:
    """content_digest of a name -> array (or tensor) mapping; ``dtypes`` names the
    stored dtype where the array's own cannot (BF16 kept as its raw uint16 bits)."""
    items = []
    for name, t in tensors.items():
        dtype = (dtypes or {}).get(name) or dtype_name(t)
        if dtype is None:
            raise KeyError(f"{name}: dtype {t.dtype} cannot be stored")
        items.append((name, dtype, tuple(t.shape), raw_bytes(t)))
    return content_digest(items)


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the canonical JSON (SPEC §4) of ``manifest`` without its
    ``manifest_digest`` field: every other field, ``tensors``, ``content_digest`` and
    ``x-`` fields included.

    Computed from the parsed value, never from the text as read: readers need not
    require canonical text, so ``1E-5`` and ``1e-05`` digest alike."""
    fields = {key: value for key, value in manifest.items() if key != "manifest_digest"}
    text = canonical_json(fields).encode("utf-8")
    return "sha256:" + hashlib.sha256(_MANIFEST_TAG + text).hexdigest()
