"""`upsample` (IDC): store bases at 1/f resolution, enlarge them by an integer factor.

Normative description: codecs/upsample.md.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from habactl.codecs.base import MAX_SIDE, ConfigReader, Stage, StageSpec, check_shape
from habactl.codecs.errors import CodecError

MODES = ("bilinear", "nearest", "bicubic")
MAX_FACTOR = 16


class Upsample(Stage):
    """(C, h, w) -> (C, h·f, w·f); no parameters, expansion 1."""

    name = "upsample"
    version = 1

    @classmethod
    def describe(cls, configuration: dict[str, Any], in_shape: Any) -> StageSpec:
        reader = ConfigReader(cls.name, configuration)
        factor = reader.integer("factor", 1, MAX_FACTOR)
        reader.choice("mode", MODES, default="bilinear")
        config = reader.finish()
        c, h, w = check_shape(cls.name, in_shape)
        if h * factor > MAX_SIDE or w * factor > MAX_SIDE:
            raise CodecError(f"stage 'upsample': output sides {h * factor}x{w * factor} exceed {MAX_SIDE}")
        return StageSpec(cls.name, cls.version, config, (c, h, w), (c, h * factor, w * factor), 1, {})

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
