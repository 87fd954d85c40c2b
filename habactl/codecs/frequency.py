"""`frequency` (FreD-style): bases stored as a subset of their 2-D DCT coefficients.

Normative description: codecs/frequency.md. The kept frequencies are a stored mask (one
per channel, shared by every basis), chosen before distillation as the coefficients of
most energy over the real training images (`fit`). Decoding places each basis'
coefficients at the mask's positions (the others are 0) and applies the orthonormal
inverse DCT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from habactl.codecs.base import Stage, StageOption, StageSpec
from habactl.codecs.errors import CodecError, quote
from habactl.codecs.spec import describe_frequency


def dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II matrix A (n x n), float64: coefficients y = A x."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    a = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    a[0] /= math.sqrt(2.0)
    return a


class Frequency(Stage):
    """(C, 1, keep) coefficients -> (C, height, width); expansion 1."""

    name = "frequency"
    version = 1
    summary = "FreD: bases stored as their highest-energy DCT coefficients"
    # height and width: a placeholder size; `compress --frequency K` sets them to what the
    # stages after this one decode from.
    options = (StageOption("keep", 64), StageOption("height", 16), StageOption("width", 16))

    def __init__(self, spec: StageSpec) -> None:
        super().__init__(spec)
        c, h, w = spec.out_shape
        # The mask is stored (a buffer, never learned); the DCT matrices are derived.
        self.register_buffer("mask", torch.zeros(c, h, w, dtype=torch.uint8))
        self._rows = dct_matrix(h).float()
        self._cols = dct_matrix(w).float()
        self._set_mask(self._lowest_frequencies())

    @classmethod
    def describe(cls, configuration: dict[str, Any], in_shape: Any) -> StageSpec:
        return describe_frequency(configuration, in_shape)  # pure: codecs/spec.py

    @classmethod
    def input_shape_for(cls, configuration: dict[str, Any], out_shape: Any) -> Any:
        c, h, w = out_shape
        if (configuration.get("height"), configuration.get("width")) != (h, w):
            raise CodecError(
                f"stage 'frequency': configured for {configuration.get('height')}x"
                f"{configuration.get('width')}, but it must decode to {h}x{w}"
            )
        return (c, 1, configuration.get("keep"))

    # -- the mask ----------------------------------------------------------------------
    def _lowest_frequencies(self) -> Tensor:
        """A default mask (before `fit`): the `keep` coefficients of lowest r + s."""
        c, h, w = self.out_shape
        r, s = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        order = torch.argsort((r + s).flatten() * (h * w) + torch.arange(h * w), stable=True)
        flat = torch.zeros(h * w, dtype=torch.uint8)
        flat[order[: self.spec.configuration["keep"]]] = 1
        return flat.view(1, h, w).expand(c, h, w).clone()

    def _set_mask(self, mask: Tensor) -> None:
        self.get_buffer("mask").copy_(mask)
        flat = self.get_buffer("mask").flatten(1).bool()
        # Positions of the kept coefficients, per channel, in row-major order.
        self._index = torch.stack([torch.nonzero(row).flatten() for row in flat])

    @torch.no_grad()
    def fit(self, images: Tensor) -> None:
        """Keep, per channel, the `keep` coefficients of most energy (mean square over the
        images: the variance they explain about 0, the mean included); ties to the lower
        row-major index."""
        coeffs = self.analyse_full(images.double())
        energy = coeffs.square().mean(0).flatten(1)  # (C, H*W)
        c, h, w = self.out_shape
        keep = self.spec.configuration["keep"]
        order = torch.argsort(-energy, dim=1, stable=True)[:, :keep]
        mask = torch.zeros(c, h * w, dtype=torch.uint8)
        mask.scatter_(1, order, 1)
        self._set_mask(mask.view(c, h, w))

    def analyse_full(self, images: Tensor) -> Tensor:
        """All DCT coefficients of images (N, C, H, W): A_H x A_W^T."""
        rows, cols = self._rows.to(images), self._cols.to(images)
        return rows @ images @ cols.T

    @torch.no_grad()
    def analyse(self, images: Tensor) -> Tensor:
        """Images (N, C, H, W) -> the kept coefficients (N, C, 1, keep): initial bases."""
        coeffs = self.analyse_full(images.double()).flatten(2)
        index = self._index.to(coeffs.device).unsqueeze(0).expand(len(coeffs), -1, -1)
        return coeffs.gather(2, index).unsqueeze(2).float()

    # -- stored tensors ---------------------------------------------------------------------
    def named_tensors(self) -> dict[str, Tensor]:
        return {"mask": self.get_buffer("mask")}

    def parameter_count(self) -> int:
        return self.get_buffer("mask").numel()

    def load_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        if set(tensors) != {"mask"}:
            raise CodecError(
                f"stage {quote(self.name)}: tensors do not match the configuration "
                f"(missing {sorted({'mask'} - set(tensors))}, "
                f"unexpected {[quote(k) for k in sorted(set(tensors) - {'mask'})]})"
            )
        mask = tensors["mask"]
        if not isinstance(mask, Tensor) or mask.dtype != torch.uint8:
            raise CodecError(f"stage {quote(self.name)}: tensor 'mask' must be a uint8 tensor")
        if tuple(mask.shape) != tuple(self.out_shape):
            raise CodecError(
                f"stage {quote(self.name)}: tensor 'mask' has shape {list(mask.shape)}, "
                f"the configuration needs {list(self.out_shape)}"
            )
        if bool((mask > 1).any()):
            raise CodecError(
                f"stage {quote(self.name)}: tensor 'mask' holds values other than 0, 1"
            )
        keep = self.spec.configuration["keep"]
        counts = mask.flatten(1).sum(1, dtype=torch.int64)
        if bool((counts != keep).any()):
            raise CodecError(
                f"stage {quote(self.name)}: tensor 'mask' must keep exactly {keep} "
                f"coefficients per channel, keeps {counts.tolist()}"
            )
        self._set_mask(mask.cpu())

    # -- decoding ---------------------------------------------------------------------------
    def forward(self, x: Tensor, variant: Tensor | None = None) -> Tensor:
        self.check_input(x)
        c, h, w = self.out_shape
        index = self._index.to(x.device).unsqueeze(0).expand(len(x), -1, -1)
        full = torch.zeros(len(x), c, h * w, dtype=x.dtype, device=x.device)
        full = full.scatter(2, index, x.flatten(2))
        rows, cols = self._rows.to(x), self._cols.to(x)
        return rows.T @ full.view(len(x), c, h, w) @ cols
