"""`frequency` (FreD-style): bases stored as a subset of their 2-D DCT coefficients.

Normative description: codecs/frequency.md. The kept frequencies are a stored mask (one
per channel, shared by every basis, or one per class), chosen before distillation as the
coefficients of most energy over the real training images (`fit`; per class: over the
class's images). Decoding places each basis'
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
    # stages after this one decode from. mask and classes: `--frequency-mask per-class`.
    options = (StageOption("keep", 64), StageOption("height", 16), StageOption("width", 16))

    def __init__(self, spec: StageSpec) -> None:
        super().__init__(spec)
        c, h, w = spec.out_shape
        # None: one mask shared by every basis; else one mask per class.
        self.classes: int | None = spec.classes
        # The mask is stored (a buffer, never learned); the DCT matrices are derived.
        self.register_buffer("mask", torch.zeros(spec.params["mask"], dtype=torch.uint8))
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

    @property
    def per_class(self) -> bool:
        """True when each basis decodes through its class's mask (`decode(classes=...)`)."""
        return self.classes is not None

    # -- the mask ----------------------------------------------------------------------
    def _masks(self) -> int:
        return 1 if self.classes is None else self.classes

    def _lowest_frequencies(self) -> Tensor:
        """A default mask (before `fit`): the `keep` coefficients of lowest r + s."""
        c, h, w = self.out_shape
        r, s = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        order = torch.argsort((r + s).flatten() * (h * w) + torch.arange(h * w), stable=True)
        flat = torch.zeros(h * w, dtype=torch.uint8)
        flat[order[: self.spec.configuration["keep"]]] = 1
        return flat.view(h, w).expand(self.get_buffer("mask").shape).clone()

    def _set_mask(self, mask: Tensor) -> None:
        self.get_buffer("mask").copy_(mask)
        c, h, w = self.out_shape
        flat = self.get_buffer("mask").reshape(-1, h * w).bool()
        # Positions of the kept coefficients, per (mask, channel), in row-major order:
        # (masks, C, keep).
        index = torch.stack([torch.nonzero(row).flatten() for row in flat])
        self._index = index.view(self._masks(), c, -1)

    @torch.no_grad()
    def fit(self, images: Tensor, labels: Tensor | None = None) -> None:
        """Keep, per channel, the `keep` coefficients of most energy (mean square over the
        images: the variance they explain about 0, the mean included); ties to the lower
        row-major index. A per-class mask is fitted to each class's images (`labels`)."""
        coeffs = self.analyse_full(images.double()).flatten(2)  # (N, C, H*W)
        if self.classes is None:
            energy = coeffs.square().mean(0, keepdim=True)
        else:
            groups = self._groups(labels, len(images))
            energy = torch.stack([coeffs[g].square().mean(0) for g in groups])
        self.fit_energy(energy)

    @torch.no_grad()
    def fit_energy(self, energy: Tensor) -> None:
        """Keep the coefficients of most ``energy`` (masks, C, H*W): the mean square
        coefficient, over all images (one mask) or each class's (one per class), as
        :meth:`fit` computes it; for callers that stream the images."""
        c, h, w = self.out_shape
        keep = self.spec.configuration["keep"]
        order = torch.argsort(-energy, dim=2, stable=True)[..., :keep]
        mask = torch.zeros(self._masks(), c, h * w, dtype=torch.uint8, device=order.device)
        mask.scatter_(2, order, 1)  # on the images' device; the buffer copies it in
        self._set_mask(mask.view(self.get_buffer("mask").shape))

    def _groups(self, labels: Tensor | None, count: int) -> list[Tensor]:
        """The images of each class, for fitting per-class masks; every class needs some."""
        k = self._masks()
        if labels is None or labels.shape != (count,):
            raise CodecError("stage 'frequency': a per-class mask is fitted to labelled images")
        groups = [torch.nonzero(labels == j).flatten() for j in range(k)]
        empty = [j for j, g in enumerate(groups) if len(g) == 0]
        if empty:
            raise CodecError(
                f"stage 'frequency': class {empty[0]} has no images to fit its mask to"
            )
        return groups

    def analyse_full(self, images: Tensor) -> Tensor:
        """All DCT coefficients of images (N, C, H, W): A_H x A_W^T."""
        rows, cols = self._rows.to(images), self._cols.to(images)
        return rows @ images @ cols.T

    @torch.no_grad()
    def analyse(self, images: Tensor, classes: Tensor | None = None) -> Tensor:
        """Images (N, C, H, W) -> the kept coefficients (N, C, 1, keep): initial bases.
        With a per-class mask, `classes` (N,) names the mask of each image."""
        coeffs = self.analyse_full(images.double()).flatten(2)
        index = self._index_for(classes, len(coeffs), coeffs.device)
        return coeffs.gather(2, index).unsqueeze(2).float()

    def _index_for(self, classes: Tensor | None, count: int, device: torch.device) -> Tensor:
        """The kept positions of each of `count` bases: (count, C, keep)."""
        if self.classes is None:
            return self._index[0].to(device).unsqueeze(0).expand(count, -1, -1)
        if classes is None:
            raise CodecError(
                "stage 'frequency': a per-class mask decodes each basis through its "
                "class's mask; the bases' classes are needed"
            )
        if classes.shape != (count,) or classes.dtype != torch.int64:
            raise CodecError(
                f"stage 'frequency': classes must be int64 ({count},), "
                f"got {classes.dtype} {list(classes.shape)}"
            )
        if count and (int(classes.min()) < 0 or int(classes.max()) >= self.classes):
            raise CodecError(f"stage 'frequency': classes must lie in 0..{self.classes - 1}")
        return self._index.to(device)[classes.to(device)]

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
        expected = tuple(self.spec.params["mask"])
        if tuple(mask.shape) != expected:
            raise CodecError(
                f"stage {quote(self.name)}: tensor 'mask' has shape {list(mask.shape)}, "
                f"the configuration needs {list(expected)}"
            )
        if bool((mask > 1).any()):
            raise CodecError(
                f"stage {quote(self.name)}: tensor 'mask' holds values other than 0, 1"
            )
        keep = self.spec.configuration["keep"]
        # Ones per channel: (C,) for a shared mask, (classes, C) for per-class ones.
        counts = mask.flatten(-2).sum(-1, dtype=torch.int64)
        if bool((counts != keep).any()):
            raise CodecError(
                f"stage {quote(self.name)}: tensor 'mask' must keep exactly {keep} "
                f"coefficients per channel, keeps {counts.tolist()}"
            )
        self._set_mask(mask.cpu())

    # -- decoding ---------------------------------------------------------------------------
    def forward(
        self, x: Tensor, variant: Tensor | None = None, classes: Tensor | None = None
    ) -> Tensor:
        """Coefficients -> images; `classes` (N,) picks each basis' mask when per class."""
        self.check_input(x)
        c, h, w = self.out_shape
        index = self._index_for(classes, len(x), x.device)
        full = torch.zeros(len(x), c, h * w, dtype=x.dtype, device=x.device)
        full = full.scatter(2, index, x.flatten(2))
        rows, cols = self._rows.to(x), self._cols.to(x)
        return rows.T @ full.view(len(x), c, h, w) @ cols
