"""The knowledge-distillation recipe's augmentation: a random resized crop and a flip.

Each image gets its own crop: an area fraction drawn uniformly from [scale, 1] of the
image, an aspect ratio drawn log-uniformly from [3/4, 4/3] (torchvision's
``RandomResizedCrop`` defaults, which the teacher-driven papers train with), each side
clipped to the image, a position drawn uniformly where the crop fits, then resized back
to the image size (bilinear). With `flip` the crop is mirrored with probability 1/2.
Crop, resize and mirror are one ``grid_sample`` per batch.

One departure from torchvision: it redraws a crop that does not fit (up to 10 times, then
takes a centre crop); here the sides are clipped instead, so every image costs one draw
and a batch one resampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from habactl.errors import HabaError
from habactl.runtime.device import to_device
from habactl.training.augment import AugmentParams

DEFAULT_SCALE = 0.08  # torchvision's and SRe2L's smallest area fraction
RATIO = (3 / 4, 4 / 3)


class ResizedCropFlip:
    """``aug(x, generator)`` or ``aug.apply(x, aug.sample(generator, batch))``."""

    strategy = "rrc_flip"

    def __init__(self, scale: float = DEFAULT_SCALE, *, flip: bool = True) -> None:
        if not (math.isfinite(scale) and 0 < scale <= 1):
            raise HabaError(f"crop scale must lie in (0, 1], got {scale!r}")
        self.scale = float(scale)
        self.flip = flip
        self.ops: tuple[str, ...] = ("crop", "flip") if flip else ("crop",)

    def to_config(self) -> dict:
        return {"strategy": self.strategy, "scale": self.scale, "flip": self.flip}

    def sample(self, generator: torch.Generator, batch: int | None = None) -> AugmentParams:
        """One crop (and flip decision) per image; batch None: one shared by the batch."""
        n = 1 if batch is None else int(batch)

        def u() -> Tensor:
            return torch.rand(n, generator=generator, device=generator.device).float().cpu()

        area = self.scale + u() * (1 - self.scale)
        log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
        ratio = torch.exp(log_lo + u() * (log_hi - log_lo))  # width / height
        width = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the image's sides
        height = torch.sqrt(area / ratio).clamp(max=1.0)
        # The crop's centre in grid_sample's [-1, 1] coordinates, where the crop fits.
        centre_x = (u() * 2 - 1) * (1 - width)
        centre_y = (u() * 2 - 1) * (1 - height)
        mirror = (u() < 0.5).float() if self.flip else torch.zeros(n)
        values = {
            "width": width,
            "height": height,
            "centre_x": centre_x,
            "centre_y": centre_y,
            "mirror": mirror,
        }
        return AugmentParams("rrc", values, batch)

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Crop, resize and mirror x (N, C, H, W) by params; never in place."""
        if x.dim() != 4:
            raise ValueError(f"augmentation expects (N, C, H, W), got shape {tuple(x.shape)}")
        if params.batch is not None and params.batch != x.size(0):
            raise ValueError(f"per-sample parameters for {params.batch} images, got {x.size(0)}")
        v = {k: to_device(t.to(x.dtype), x.device) for k, t in params.values.items()}
        sign = 1 - 2 * v["mirror"]  # -1 mirrors the crop left to right
        zero = torch.zeros_like(v["width"])
        theta = torch.stack(
            [
                torch.stack([v["width"] * sign, zero, v["centre_x"]], 1),
                torch.stack([zero, v["height"], v["centre_y"]], 1),
            ],
            1,
        )
        n, c, h, w = x.shape
        grid = F.affine_grid(theta, [theta.size(0), c, h, w], align_corners=False)
        if grid.size(0) != n:
            grid = grid.expand(n, -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __call__(self, x: Tensor, generator: torch.Generator, *, per_sample: bool = True) -> Tensor:
        """Sample and apply: one crop per image (per_sample), else one for the batch."""
        return self.apply(x, self.sample(generator, x.size(0) if per_sample else None))


__all__ = ["DEFAULT_SCALE", "RATIO", "ResizedCropFlip"]
