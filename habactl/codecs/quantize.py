"""`quantize`: bases stored at lower precision (float16, bfloat16, uint8, packed uint4).

Normative description: codecs/quantize.md. The stage is always the first one: its input
is the stored `bases` tensor. Decoding dequantises it to float32. During distillation the
input is the float32 bases being learned, and the stage rounds them the way storing
them will (a straight-through estimator: the forward pass sees the stored values, the
gradient passes as if rounding were the identity), so the learned bases are the
quantised ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from habactl.codecs.base import Stage, StageOption, StageSpec
from habactl.codecs.errors import CodecError, quote
from habactl.codecs.spec import QUANTIZE_DTYPES, describe_quantize, quantize_stored_shape

# The float dtypes: stored as the nearest value of that type, no scale.
FLOAT_TYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class Quantize(Stage):
    """(C, H, W) codes -> (C, H, W) float32; expansion 1."""

    name = "quantize"
    version = 1
    summary = "bases stored as float16, bfloat16, uint8 or packed uint4 codes"
    # No stage flags: `compress --quantize DTYPE` puts this stage in front of any codec.
    options = (StageOption("dtype", "uint8"), StageOption("granularity", "tensor"))

    def __init__(self, spec: StageSpec) -> None:
        super().__init__(spec)
        dtype = spec.configuration["dtype"]
        _, self.per_byte, self.levels = QUANTIZE_DTYPES[dtype]
        self.float_type = FLOAT_TYPES.get(dtype)  # None for the integer codes
        self.stored_shape = quantize_stored_shape(spec)
        # Buffers, not parameters: the grid is fitted to the bases (calibrate), never
        # learned, so no optimiser may move it; they are still stored and counted.
        for key, shape in spec.params.items():
            self.register_buffer(key, torch.ones(shape) if key == "scale" else torch.zeros(shape))

    @classmethod
    def describe(cls, configuration: dict[str, Any], in_shape: Any) -> StageSpec:
        return describe_quantize(configuration, in_shape)  # pure: codecs/spec.py

    # -- stored tensors are buffers ------------------------------------------------------
    def named_tensors(self) -> dict[str, Tensor]:
        return dict(self.named_buffers())

    def parameter_count(self) -> int:
        return sum(b.numel() for b in self.buffers())

    def load_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        super().load_tensors(tensors)
        if self.levels is None:
            return
        scale, zero = self.get_buffer("scale"), self.get_buffer("zero_point")
        if not bool((scale > 0).all()):
            raise CodecError(f"stage {quote(self.name)}: tensor 'scale' must be positive")
        if not bool(((zero >= 0) & (zero <= self.levels - 1) & (zero == zero.round())).all()):
            raise CodecError(
                f"stage {quote(self.name)}: tensor 'zero_point' must hold whole numbers in "
                f"0..{self.levels - 1} (a zero-point is a code)"
            )

    # -- the grid --------------------------------------------------------------------------
    def _view(self, t: Tensor) -> Tensor:
        return t.view(1, -1, 1, 1)

    @torch.no_grad()
    def calibrate(self, bases: Tensor) -> None:
        """Fit scale and zero-point to the range of `bases` (all of them, per tensor or
        per channel), so that the lowest and the highest value are codes 0 and max."""
        if self.levels is None:
            return
        x = bases.detach().float()
        if self.get_buffer("scale").numel() == 1:
            low, high = x.min().reshape(1), x.max().reshape(1)
        else:
            per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
            low, high = per_channel.min(1).values, per_channel.max(1).values
        low, high = torch.minimum(low, torch.zeros_like(low)), torch.maximum(high, low)
        top = float(self.levels - 1)
        scale = ((high - low) / top).clamp_min(1e-8)
        zero = (-low / scale).round().clamp(0, top)
        self.get_buffer("scale").copy_(scale)
        self.get_buffer("zero_point").copy_(zero)

    def codes(self, x: Tensor) -> Tensor:
        """Float bases -> integer codes (as float32), on the current grid."""
        scale, zero = (
            self._view(self.get_buffer("scale")),
            self._view(self.get_buffer("zero_point")),
        )
        return (x / scale + zero).round().clamp(0, self.levels - 1)  # type: ignore[operator]

    def _dequantize(self, codes: Tensor) -> Tensor:
        scale, zero = (
            self._view(self.get_buffer("scale")),
            self._view(self.get_buffer("zero_point")),
        )
        return (codes.float() - zero) * scale

    # -- storing -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, bases: Tensor) -> Tensor:
        """Float bases -> the stored tensor (calibrate first)."""
        x = bases.detach().float()
        if self.float_type is not None:
            return x.to(self.float_type)
        codes = self.codes(x).to(torch.uint8)
        if self.per_byte == 1:
            return codes
        if codes.shape[-1] % 2:  # odd width: the last byte's high nibble is 0
            codes = torch.nn.functional.pad(codes, (0, 1))
        return codes[..., 0::2] | (codes[..., 1::2] << 4)

    def _unpack(self, stored: Tensor) -> Tensor:
        low, high = stored & 0x0F, stored >> 4
        w = self.in_shape[2]
        if w % 2 and bool((high[..., -1] != 0).any()):
            raise CodecError(
                f"stage {quote(self.name)}: the padding nibble of an odd-width row is not 0"
            )
        both = torch.stack((low, high), dim=-1).reshape(*stored.shape[:-1], -1)
        return both[..., :w]

    # -- decoding ------------------------------------------------------------------------------
    def forward(self, x: Tensor, variant: Tensor | None = None) -> Tensor:
        if isinstance(x, Tensor) and x.dtype == torch.float32:
            self.check_input(x)
            return self._fake_quantize(x)
        expected = self.float_type or torch.uint8
        if (
            not isinstance(x, Tensor)
            or x.dtype != expected
            or x.dim() != 4
            or tuple(x.shape[1:]) != self.stored_shape
        ):
            got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise CodecError(
                f"stage {quote(self.name)}: stored bases must be {expected} "
                f"(N, {', '.join(map(str, self.stored_shape))}), got {got}"
            )
        if self.float_type is not None:
            return x.float()
        return self._dequantize(self._unpack(x) if self.per_byte == 2 else x)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        """The stored values in the forward pass, the identity's gradient backwards."""
        if self.float_type is not None:
            stored = x.to(self.float_type).float()
        else:
            stored = self._dequantize(self.codes(x))
        return x + (stored - x).detach()
