"""bfloat16 without torch: the top 16 bits of a float32 (format/SPEC.md §2).

numpy has no bfloat16 type, and safetensors' numpy framework refuses one, so the
torch-free reader keeps a ``BF16`` tensor as its raw bits (``uint16``) and widens them
to float32 when it hands out values: ``float32 bits = bf16 bits << 16``, exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy

BF16 = "BF16"  # the safetensors dtype name


def widen(bits: numpy.ndarray) -> numpy.ndarray:
    """Raw bfloat16 bits (uint16, any shape) -> the same values as float32 (exact)."""
    import numpy as np

    wide = bits.astype("<u4", copy=False) << np.uint32(16)
    return wide.view("<f4").astype(np.float32, copy=False)


def read_bits(path: Path, start: int, shape: tuple[int, ...]) -> numpy.ndarray:
    """The raw bits of one BF16 tensor, ``2 · prod(shape)`` bytes from byte ``start``.

    The caller has checked the header (offsets tile the data section within the file),
    so the size read is bounded by the file; a file that shrank since is reported."""
    import math

    import numpy as np

    count = math.prod(shape)
    with open(path, "rb") as file:
        file.seek(start)
        data = file.read(2 * count)
    if len(data) != 2 * count:
        raise EOFError(f"{2 * count} bytes expected, {len(data)} read (the file shrank)")
    return np.frombuffer(data, dtype="<u2").reshape(shape).copy()
