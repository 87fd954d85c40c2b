"""`hallucinate` (HaBa): K tiny affine networks, each turning one basis into one image.

Each hallucinator: encoder Conv2d(C -> hidden, k x k, stride 1, no padding), then
``z * scale + shift`` (per pixel or per channel), then decoder ConvTranspose2d
(hidden -> C, k x k), no activation. Normative description: codecs/hallucinate.md.

Border behaviour: the unpadded encoder sees only the (H-k+1) x (W-k+1) positions where
the whole kernel fits; the transposed conv spreads each of them back over k x k pixels,
restoring (H, W). A pixel in the outer ring of width (k-1)/2 is therefore reached by
fewer encoder positions than an interior one, and at the identity initialisation it
decodes to the decoder bias (0), not to the input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from habactl.codecs.base import Stage, StageOption, StageSpec
from habactl.codecs.errors import CodecError
from habactl.codecs.spec import HALLUCINATE_DEFAULTS, describe_hallucinate
from habactl.runtime.device import to_device


class _Weights(nn.Module):
    """A named pair of parameters (``weight``, ``bias``): keeps ``encoder.weight``-style
    names in the state dict while giving the type checker their types."""

    weight: nn.Parameter
    bias: nn.Parameter


class Hallucinate(Stage):
    """(C, H, W) -> (C, H, W) through one of `count` hallucinators; expansion `count`."""

    name = "hallucinate"
    version = 1
    summary = "HaBa: K hallucinators turn each basis into K images"
    options = (
        StageOption(
            "arch",
            HALLUCINATE_DEFAULTS["arch"],
            "--hallucinator-arch",
            "channel-affine (a few dozen values each) or pixel-affine (the reference design).",
        ),
        StageOption(
            "count", HALLUCINATE_DEFAULTS["count"], "--hallucinators", "Number of hallucinators.", 1
        ),
        StageOption(
            "hidden",
            HALLUCINATE_DEFAULTS["hidden"],
            "--hallucinator-hidden",
            "Hidden channels of a hallucinator.",
            1,
        ),
        StageOption(
            "kernel",
            HALLUCINATE_DEFAULTS["kernel"],
            "--hallucinator-kernel",
            "Kernel size of a hallucinator (odd).",
            1,
        ),
    )

    @classmethod
    def describe(cls, configuration: dict[str, Any], in_shape: Any) -> StageSpec:
        return describe_hallucinate(configuration, in_shape)  # pure: codecs/spec.py

    def __init__(self, spec: StageSpec) -> None:
        super().__init__(spec)
        p = spec.params
        # Registration order fixes named_parameters() order: encoder, scale, shift, decoder.
        self.scale: nn.Parameter
        self.shift: nn.Parameter
        self.encoder = _Weights()
        self.encoder.weight = nn.Parameter(torch.empty(p["encoder.weight"]))
        self.encoder.bias = nn.Parameter(torch.empty(p["encoder.bias"]))
        self.scale = nn.Parameter(torch.empty(p["scale"]))
        self.shift = nn.Parameter(torch.empty(p["shift"]))
        self.decoder = _Weights()
        self.decoder.weight = nn.Parameter(torch.empty(p["decoder.weight"]))
        self.decoder.bias = nn.Parameter(torch.empty(p["decoder.bias"]))
        self.count = spec.expansion
        self.hidden = spec.configuration["hidden"]
        self.kernel = spec.configuration["kernel"]
        self.per_pixel = spec.configuration["arch"] == "pixel-affine"

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Near identity: hidden channel j copies input channel j mod C through the
        centre tap, and the decoder averages the copies of each channel back. With
        hidden >= C the map is exactly the identity in the interior; channels with no
        copy (hidden < C) decode to 0. Scale 1, shift 0, biases 0."""
        c, centre = self.in_shape[0], self.kernel // 2
        copies = [len(range(i, self.hidden, c)) for i in range(c)]
        for p in (
            self.encoder.weight,
            self.encoder.bias,
            self.shift,
            self.decoder.weight,
            self.decoder.bias,
        ):
            p.zero_()
        self.scale.fill_(1.0)
        for j in range(self.hidden):
            self.encoder.weight[:, j, j % c, centre, centre] = 1.0
            self.decoder.weight[:, j, j % c, centre, centre] = 1.0 / copies[j % c]

    # -- decoding ------------------------------------------------------------------
    def _encoder(self) -> tuple[Tensor, Tensor]:
        """Encoder weight and bias per hallucinator; a per-channel affine is folded in
        (conv(x)·s + t == conv_{w·s}(x) + b·s + t), which saves a pass over the map."""
        if self.per_pixel:
            return self.encoder.weight, self.encoder.bias
        scale = self.scale.flatten(1)  # (K, hidden)
        weight = self.encoder.weight * scale[:, :, None, None, None]
        return weight, self.encoder.bias * scale + self.shift.flatten(1)

    def _variant(self, variant: Tensor | None, n: int) -> Tensor:
        if variant is None:
            if self.count == 1:
                return torch.zeros(n, dtype=torch.long, device=self.scale.device)
            raise CodecError(
                f"stage 'hallucinate': {self.count} hallucinators, so a variant "
                "per sample is required"
            )
        if (
            not isinstance(variant, Tensor)
            or variant.shape != (n,)
            or variant.dtype.is_floating_point
            or variant.dtype.is_complex
            or variant.dtype == torch.bool
        ):
            raise CodecError(
                f"stage 'hallucinate': variant must be an integer tensor of shape ({n},)"
            )
        # Checked before the move: variants drawn on the host need no device read.
        if n and (int(variant.min()) < 0 or int(variant.max()) >= self.count):
            raise CodecError(f"stage 'hallucinate': variant must lie in [0, {self.count})")
        return to_device(variant.long(), self.scale.device)

    def forward(self, x: Tensor, variant: Tensor | None = None) -> Tensor:
        """Sample n through hallucinator variant[n], the whole batch in one grouped
        conv (groups = N: each sample is its own group with its own gathered weights)."""
        self.check_input(x)
        n = x.shape[0]
        variant = self._variant(variant, n)
        if n == 0:
            return x.new_zeros((0, *self.out_shape))
        c, height, width = self.in_shape
        k, hid = self.kernel, self.hidden
        enc_w, enc_b = self._encoder()
        z = F.conv2d(
            x.reshape(1, n * c, height, width),
            enc_w[variant].reshape(n * hid, c, k, k),
            enc_b[variant].reshape(n * hid),
            groups=n,
        )
        if self.per_pixel:
            z = z.view(n, hid, *z.shape[-2:]) * self.scale[variant] + self.shift[variant]
            z = z.view(1, n * hid, *z.shape[-2:])
        y = F.conv_transpose2d(
            z,
            self.decoder.weight[variant].reshape(n * hid, c, k, k),
            self.decoder.bias[variant].reshape(n * c),
            groups=n,
        )
        return y.view(n, c, height, width)

    def forward_all(self, x: Tensor) -> Tensor:
        """Every sample through every hallucinator: (N·K, C, H, W), item b·K + v.
        One plain conv computes all K·hidden encoder channels (each sees every input
        channel), one transposed conv with groups = K decodes them."""
        self.check_input(x)
        n = x.shape[0]
        c, height, width = self.in_shape
        k, hid, count = self.kernel, self.hidden, self.count
        if n == 0:
            return x.new_zeros((0, *self.out_shape))
        enc_w, enc_b = self._encoder()
        z = F.conv2d(x, enc_w.reshape(count * hid, c, k, k), enc_b.reshape(count * hid))
        if self.per_pixel:
            z = z.view(n, count, hid, *z.shape[-2:]) * self.scale + self.shift
            z = z.view(n, count * hid, *z.shape[-2:])
        y = F.conv_transpose2d(
            z,
            self.decoder.weight.reshape(count * hid, c, k, k),
            self.decoder.bias.reshape(count * c),
            groups=count,
        )
        return y.view(n * count, c, height, width)
