"""Differentiable Siamese augmentation (DSA, Zhao & Bilen 2021; docs/method.md).

Each call picks ONE op group of the strategy at random and draws its values; the same
``AugmentParams`` then transform the real and the synthetic batch identically, which is
what lets a matching loss compare them. Every op is differentiable w.r.t. the images
(arithmetic, padding, gather, grid_sample), so gradients reach the synthetic data.

Two deliberate departures from the reference code, whose Siamese mode reseeds before
every draw: here brightness/saturation/contrast, the two scale factors, the two crop
shifts and the two cutout coordinates are independent draws (the reference makes each
pair equal).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from habactl.errors import HabaError
from habactl.runtime.device import to_device

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DEFAULT_PARAMS: dict[str, float] = {
    "brightness": 1.0,  # add (u - 0.5) * brightness
    "saturation": 2.0,  # scale the deviation from the per-pixel channel mean by u * saturation
    "contrast": 0.5,  # scale the deviation from the image mean by u + contrast
    "crop_pad": 0.125,  # translate by up to this fraction of the side, zero fill
    "cutout": 0.5,  # zero a square of this fraction of the side
    "flip_prob": 0.5,  # horizontal flip probability
    "scale": 1.2,  # x and y scale factors in [1/scale, scale]
    "rotate": 15.0,  # rotation in [-rotate, rotate] degrees
}


@dataclass(frozen=True)
class AugmentParams:
    """One op and its random values.

    ``values`` are float32 CPU tensors of length 1 (Siamese: shared by every image, so
    batches of any size get the same transform) or of length ``batch`` (one draw per
    image). Values that depend on the image size (crop shifts, cutout centres) are kept
    as uniforms in [0, 1) and turned into whole pixels by ``apply``.
    """

    op: str
    values: dict[str, Tensor] = field(default_factory=dict)
    batch: int | None = None


def _rand(generator: torch.Generator, n: int) -> Tensor:
    # Draw on the generator's own device, keep on CPU: a CPU generator gives the same
    # parameters wherever the images live.
    return torch.rand(n, generator=generator, device=generator.device).float().cpu()


class SiameseAugment:
    """The DSA augmenter: ``aug(x, generator)`` or ``aug.apply(x, aug.sample(generator))``."""

    def __init__(
        self, strategy: str = DEFAULT_STRATEGY, *, flip: bool = True, **param_overrides: float
    ) -> None:
        names = [] if strategy.lower() == "none" else strategy.split("_")
        unknown = [n for n in names if n not in OPS]
        if unknown or (not names and strategy.lower() != "none"):
            raise HabaError(
                f"unknown augmentation op(s) {unknown or [strategy]} in "
                f"{strategy!r}; known: {', '.join(OPS)} (or 'none')"
            )
        bad = sorted(set(param_overrides) - set(DEFAULT_PARAMS))
        if bad:
            raise HabaError(
                f"unknown augmentation parameter(s) {', '.join(bad)}; "
                f"known: {', '.join(DEFAULT_PARAMS)}"
            )
        self.strategy = strategy
        self.flip = flip
        self.params = {**DEFAULT_PARAMS, **{k: float(v) for k, v in param_overrides.items()}}
        self._check_params()
        # Digits must not be mirrored: drop the op rather than set its probability to 0,
        # so the remaining ops keep their equal share.
        self.ops = tuple(n for n in dict.fromkeys(names) if flip or n != "flip")

    def _check_params(self) -> None:
        p = self.params
        if not all(math.isfinite(v) and v >= 0 for v in p.values()):
            raise HabaError(f"augmentation parameters must be finite and >= 0: {p}")
        if p["flip_prob"] > 1 or p["crop_pad"] >= 1 or p["cutout"] > 1 or p["scale"] < 1:
            raise HabaError(
                f"augmentation needs flip_prob <= 1, crop_pad < 1, cutout <= 1 and scale >= 1: {p}"
            )

    def to_config(self) -> dict:
        """Everything needed to rebuild this augmenter (for provenance)."""
        return {"strategy": self.strategy, "flip": self.flip, "params": dict(self.params)}

    @classmethod
    def from_config(cls, config: dict) -> SiameseAugment:
        return cls(config["strategy"], flip=config["flip"], **config.get("params", {}))

    # -- sampling -------------------------------------------------------------------

    def sample(self, generator: torch.Generator, batch: int | None = None) -> AugmentParams:
        """Pick one op and draw its values: shared (batch None) or one per image."""
        if not self.ops:
            return AugmentParams("none", {}, batch)
        n = 1 if batch is None else int(batch)
        pick = torch.randint(len(self.ops), (1,), generator=generator, device=generator.device)
        op = self.ops[int(pick.item())]
        p = self.params

        def u() -> Tensor:
            return _rand(generator, n)

        if op == "color":
            values = {
                "brightness": (u() - 0.5) * p["brightness"],
                "saturation": u() * p["saturation"],
                "contrast": u() + p["contrast"],
            }
        elif op == "crop":
            values = {"shift_y": u(), "shift_x": u()}
        elif op == "cutout":
            values = {"center_y": u(), "center_x": u()}
        elif op == "flip":
            values = {"flip": (u() < p["flip_prob"]).float()}
        elif op == "scale":
            lo, hi = 1.0 / p["scale"], p["scale"]
            values = {"sx": u() * (hi - lo) + lo, "sy": u() * (hi - lo) + lo}
        else:  # rotate
            values = {"angle": (u() - 0.5) * 2 * math.radians(p["rotate"])}
        return AugmentParams(op, values, batch)

    def __call__(
        self, x: Tensor, generator: torch.Generator, *, per_sample: bool = False
    ) -> Tensor:
        """Sample and apply: Siamese by default, one draw per image with per_sample."""
        return self.apply(x, self.sample(generator, x.size(0) if per_sample else None))

    # -- applying -------------------------------------------------------------------

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Transform x (N, C, H, W) by params; differentiable w.r.t. x, never in place."""
        if x.dim() != 4:
            raise ValueError(f"augmentation expects (N, C, H, W), got shape {tuple(x.shape)}")
        if params.batch is not None and params.batch != x.size(0):
            raise ValueError(f"per-sample parameters for {params.batch} images, got {x.size(0)}")
        op = params.op
        if op == "none":
            return x
        if op == "crop":
            return self._crop(x, params.values)
        if op == "cutout":
            return self._cutout(x, params.values)
        # The values are drawn on the host; moved without waiting for the device.
        v = {
            k: to_device(t.to(x.dtype), x.device).view(-1, 1, 1, 1)
            for k, t in params.values.items()
        }
        if op == "color":
            x = x + v["brightness"]
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * v["saturation"] + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - mean) * v["contrast"] + mean
        if op == "flip":
            if v["flip"].numel() == 1:  # Siamese: one decision, no need to flip and discard
                return x.flip(3) if params.values["flip"].item() > 0.5 else x
            return torch.where(v["flip"] > 0.5, x.flip(3), x)
        if op == "scale":
            sx, sy = v["sx"].flatten(), v["sy"].flatten()
            zero = torch.zeros_like(sx)
            theta = torch.stack(
                [torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1
            )
            return _warp(x, theta)
        if op == "rotate":
            a = v["angle"].flatten()
            cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
            theta = torch.stack(
                [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
            )
            return _warp(x, theta)
        raise ValueError(f"unknown augmentation op {op!r}")

    def _crop(self, x: Tensor, values: dict[str, Tensor]) -> Tensor:
        """Translate by whole pixels with zero fill (the reference's pad-and-crop)."""
        n, c, h, w = x.shape
        ty = _whole_shift(values["shift_y"], h, self.params["crop_pad"])
        tx = _whole_shift(values["shift_x"], w, self.params["crop_pad"])
        if ty.numel() == 1:
            # Shared shift: negative padding crops, so one F.pad moves the whole batch.
            dy, dx = int(ty), int(tx)
            return F.pad(x, (dx, -dx, dy, -dy))
        rows, row_ok = _source_index(to_device(ty, x.device), h)
        cols, col_ok = _source_index(to_device(tx, x.device), w)
        x = x.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
        x = x.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
        keep = (row_ok.view(n, 1, h, 1) & col_ok.view(n, 1, 1, w)).to(x.dtype)
        return x * keep

    def _cutout(self, x: Tensor, values: dict[str, Tensor]) -> Tensor:
        """Zero a square of cutout·side centred at a random pixel (clipped at the border)."""
        h, w = x.shape[2:]
        ratio = self.params["cutout"]
        size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
        # Centres range over the reference's randint(0, side + 1 - size % 2).
        cy = to_device((values["center_y"] * (h + 1 - size_h % 2)).floor().long(), x.device)
        cx = to_device((values["center_x"] * (w + 1 - size_w % 2)).floor().long(), x.device)
        top, left = (cy - size_h // 2).view(-1, 1), (cx - size_w // 2).view(-1, 1)
        r = torch.arange(h, device=x.device).view(1, h)
        col = torch.arange(w, device=x.device).view(1, w)
        in_r = (r >= top) & (r < top + size_h)
        in_c = (col >= left) & (col < left + size_w)
        hole = in_r.unsqueeze(2) & in_c.unsqueeze(1)  # (B, H, W)
        return x * (~hole).unsqueeze(1).to(x.dtype)


def _whole_shift(u: Tensor, side: int, ratio: float) -> Tensor:
    """Uniform u in [0, 1) -> a whole-pixel shift uniform on [-s, s], s = round(ratio·side)."""
    s = int(side * ratio + 0.5)
    return (u * (2 * s + 1)).floor().long().clamp(max=2 * s) - s


def _source_index(shift: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """For output index i, the source index i - shift (clamped) and whether it is inside."""
    src = torch.arange(side, device=shift.device).view(1, side) - shift.view(-1, 1)
    inside = (src >= 0) & (src < side)
    return src.clamp(0, side - 1), inside


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Resample x through affine maps theta (B, 2, 3); B = 1 is shared by the batch."""
    n, c, h, w = x.shape
    grid = F.affine_grid(theta, [theta.size(0), c, h, w], align_corners=True)
    if grid.size(0) != n:
        grid = grid.expand(n, -1, -1, -1)  # one grid for all: computed once
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class Augmenter(Protocol):
    """What `BatchAugment` drives: DSA (`SiameseAugment`) or a random resized crop
    (habactl.training.resized_crop)."""

    ops: tuple[str, ...]

    def __call__(
        self, x: Tensor, generator: torch.Generator, *, per_sample: bool = False
    ) -> Tensor: ...

    def to_config(self) -> dict: ...


class BatchAugment:
    """A training recipe's augmentation (DSA, or a random resized crop) as a plain batch
    transform, reproducible from a seed.

    ``aug(images)`` augments a batch (N, C, H, W) on whatever device it lives on: one op
    group per call, its values drawn per image (as ``habactl evaluate`` trains). The
    values are drawn on the CPU from the transform's own generator, so a seed gives the
    same augmentation on a CPU and on a GPU, and the global RNG is never touched.

    Two ways to use it (docs/training.md):

    - in the training loop, on the batch after moving it to the device;
    - in the DataLoader's workers: ``DataLoader(train, collate_fn=aug.collate, ...)``.

    The stream of draws is a function of (seed, epoch, DataLoader worker, distributed
    rank). In a worker it also follows the seed the DataLoader gives that worker, which
    differs every epoch and is reproducible under ``torch.manual_seed`` or a seeded
    DataLoader ``generator``; call :meth:`set_epoch` each epoch (as with
    ``DistributedSampler``) to make the epoch explicit.
    """

    def __init__(self, augmenter: Augmenter, *, seed: int = 0, per_sample: bool = True) -> None:
        self.augmenter = augmenter
        self.seed = int(seed)
        self.per_sample = per_sample
        self.epoch = 0
        self._key: tuple[int, ...] | None = None
        self._generator: torch.Generator | None = None

    def set_epoch(self, epoch: int) -> None:
        """Restart the draws as a function of (seed, epoch)."""
        self.epoch = int(epoch)
        self._key = None

    def __call__(self, images: Tensor) -> Tensor:
        """The augmented batch (a new tensor, same device and dtype; no gradient)."""
        # Checked before anything is drawn: a wrong call leaves the stream where it was.
        if images.dim() != 4:
            raise ValueError(
                f"augmentation expects a batch (N, C, H, W), got shape {tuple(images.shape)}"
            )
        with torch.no_grad():
            return self.augmenter(images, self._stream(), per_sample=self.per_sample)

    def collate(self, items: list) -> tuple[Tensor, Tensor]:
        """A DataLoader ``collate_fn``: stack (image, label) pairs, augment the images."""
        from torch.utils.data import default_collate

        images, labels = default_collate(items)
        return self(images), labels

    def _stream(self) -> torch.Generator:
        # Re-derived whenever the epoch, the worker or the process changes: a copy pickled
        # into a worker must not replay the parent's draws, nor the other workers'.
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = (-1, -1) if info is None else (int(info.id), int(info.seed))
        key = (self.seed, self.epoch, *worker, _rank(), os.getpid())
        if key != self._key or self._generator is None:
            mixed = hashlib.sha256(repr(key[:-1]).encode()).digest()
            seed = int.from_bytes(mixed[:8], "little") >> 1  # manual_seed takes < 2**63
            self._generator = torch.Generator().manual_seed(seed)
            self._key = key
        return self._generator

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_generator"], state["_key"] = None, None  # each process derives its own
        return state

    def __repr__(self) -> str:
        ops = "_".join(self.augmenter.ops) or "none"
        return (
            f"BatchAugment({ops}, seed={self.seed}, epoch={self.epoch}, "
            f"per_sample={self.per_sample})"
        )


def _rank() -> int:
    """This process's rank in torch.distributed (0 when it is not initialised)."""
    dist = torch.distributed
    return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else 0
