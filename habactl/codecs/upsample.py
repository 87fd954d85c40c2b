"""`upsample` (IDC): store bases at 1/f resolution, enlarge them by an integer factor.

Normative description: codecs/upsample.md.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from habactl.codecs.base import Stage, StageOption, StageSpec
from habactl.codecs.errors import CodecError
from habactl.codecs.spec import UPSAMPLE_DEFAULTS, describe_upsample


class Upsample(Stage):
    """(C, h, w) -> (C, h·f, w·f); no parameters, expansion 1."""

    name = "upsample"
    version = 1
    summary = "IDC: bases stored at 1/factor resolution"
    options = (
        StageOption(
            "factor",
            UPSAMPLE_DEFAULTS["factor"],
            "--factor",
            "IDC downsampling factor of the bases.",
            min=1,
        ),
        StageOption("mode", UPSAMPLE_DEFAULTS["mode"]),
    )

    @classmethod
    def input_shape_for(cls, configuration: dict[str, Any], out_shape: Any) -> Any:
        c, h, w = out_shape
        f = configuration.get("factor")
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise CodecError(f"stage 'upsample': factor must be at least 1, got {f!r}")
        if h % f or w % f:
            raise CodecError(
                f"factor {f} does not divide the image size {h}x{w}; "
                f"pick a factor that divides both sides"
            )
        return (c, h // f, w // f)

    @classmethod
    def describe(cls, configuration: dict[str, Any], in_shape: Any) -> StageSpec:
        return describe_upsample(configuration, in_shape)  # pure: codecs/spec.py

    def forward(self, x: Tensor, variant: Tensor | None = None) -> Tensor:
        self.check_input(x)
        factor = self.spec.configuration["factor"]
        if factor == 1:
            return x
        mode = self.spec.configuration["mode"]
        # An explicit size (not scale_factor) pins the source-coordinate formula to
        # in/out = 1/f; align_corners=False is the half-pixel convention the spec states.
        size = self.out_shape[1:]
        if mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
