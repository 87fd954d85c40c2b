"""Resource limits a reader enforces before allocating anything."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what an archive may declare.

    They exist because a .haba file is untrusted input: its header is read and
    checked against these numbers before any tensor is read or any decoder is
    built, so a tiny hostile file cannot make the reader allocate gigabytes.
    """

    max_header_bytes: int = 16 * 2**20  # the JSON header, manifest included
    max_classes: int = 100_000
    max_image_side: int = 4096  # height, width of images and of bases
    max_channels: int = 16
    max_tensors: int = 4096
    max_stages: int = 64
    max_stage_params: int = 50_000_000  # values in one pipeline parameter tensor
    # Items x values of the decoded data set: 2**31 float32 values = 8 GiB.
    max_expanded_values: int = 2**31
    max_zca_dim: int = 3 * 64 * 64  # D of the (D, D) ZCA matrix


DEFAULT_LIMITS = Limits()
