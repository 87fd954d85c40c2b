"""The transform between pixel space [0, 1] and an archive's normalised space.

Bases live in the normalised space. A consumer must send real test images through the
same transform, or accuracy is silently wrong; `Normalizer` is that transform, built
from the manifest (and the ZCA matrix when there is one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from habactl.errors import HabaError

KINDS = ("none", "mean-std", "zca")


def mean_std(mean: list[float], std: list[float]) -> dict[str, Any]:
    """Manifest entry for per-channel mean/std normalisation."""
    return {"kind": "mean-std", "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


class Normalizer:
    """Maps images in [0, 1] (N, C, H, W) to the archive's normalised space and back."""

    def __init__(self, normalization: Mapping[str, Any], zca: Tensor | None = None) -> None:
        kind = normalization.get("kind", "none")
        if kind not in KINDS:
            raise HabaError(f"unknown normalisation kind {kind!r} (known: {', '.join(KINDS)})")
        if kind == "zca" and zca is None:
            raise HabaError("normalisation 'zca' needs its matrix (tensor 'normalization.zca')")
        self.kind = kind
        self.mean = torch.tensor(normalization.get("mean", []), dtype=torch.float32)
        self.std = torch.tensor(normalization.get("std", []), dtype=torch.float32)
        self.zca = zca

    def _channel_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1, 1, 1)
        return (self.mean.to(like).view(shape), self.std.to(like).view(shape))

    def __call__(self, images: Tensor) -> Tensor:
        if self.kind == "none":
            return images
        mean, std = self._channel_stats(images)
        out = (images - mean) / std
        if self.kind == "zca":
            assert self.zca is not None
            flat = out.reshape(out.shape[0], -1) @ self.zca.to(out).T
            out = flat.reshape(out.shape)
        return out

    def to_pixels(self, images: Tensor) -> Tensor:
        """Best-effort view in [0, 1] for pictures (ZCA is shown rescaled, not inverted)."""
        if self.kind == "none":
            out = images
        elif self.kind == "mean-std":
            mean, std = self._channel_stats(images)
            out = images * std + mean
        else:
            lo = images.amin(dim=(1, 2, 3), keepdim=True)
            hi = images.amax(dim=(1, 2, 3), keepdim=True)
            out = (images - lo) / (hi - lo).clamp_min(1e-8)
        return out.clamp(0.0, 1.0)
