"""Recovery from a teacher (SRe2L's "recover", Yin et al. 2023; docs/method.md).

No real image is read. The synthetic images are optimised so that a trained teacher
(``--teacher``, a network with batch norm) sees in them what it saw in the training
set: at the input of every batch-norm layer, the per-channel mean and variance of the
synthetic batch are pulled to the layer's running statistics,

    R_bn = sum_l  m_l * ( ||mu_l(x) - running_mean_l||_2 + ||var_l(x) - running_var_l||_2 )

(m_l = ``first_bn_multiplier`` for the first layer, 1 for the others), and the teacher's
cross-entropy on each image's class is minimised: loss = CE + ``r_bn`` * R_bn. Each
iteration the images go through a random resized crop (with a left-right flip except
on digits) and one random shift (a roll of up to ``jitter`` pixels), as in the
reference. The optimiser is Adam (betas 0.5, 0.9) with a cosine learning-rate schedule
over the run; after each step the images are clipped to the valid pixel range.

Whatever the codec, the loss sees decoded images (``SyntheticSet.decode``): with
hallucinators every (basis, hallucinator) pair goes through the teacher. The decoded
items are split into batches of at most ``batch`` images (a random partition each
iteration when there are more), as the reference optimises batches of 100 images.
When the teacher's activations for all of them would take more than
``RECOMPUTE_ABOVE`` bytes (many classes, large images), each batch's are recomputed in
the backward pass instead of kept: one more teacher forward per batch, and the memory
of one batch whatever the number of images; the values are the same to the bit.

Under torchrun the batches split across the ranks (batch b on rank b mod N; every rank
draws the same partition and augmentation), and the engine sums the gradients. With
one batch (a small set) rank 0 computes it and the others add nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, Objective, setting, worth_recomputing
from habactl.distill.objectives.teaching import (
    TeacherInput,
    crop_boxes,
    open_teacher,
    pixel_bounds,
    resized_crops,
    teacher_setting,
)
from habactl.distill.sets import SyntheticSet


class _BatchNormStatistics:
    """Forward hooks on every batch-norm layer of a network: while ``on``, each layer's
    distance between its input's batch statistics and its running statistics."""

    def __init__(self, net: nn.Module) -> None:
        self.layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.distances: list[Tensor] = []
        self.on = False
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not self.on:
            return
        x = inputs[0]
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        running_mean, running_var = module.running_mean, module.running_var
        assert running_mean is not None and running_var is not None
        self.distances.append(
            torch.linalg.vector_norm(running_var - var)
            + torch.linalg.vector_norm(running_mean - mean)
        )


class Recovery(Objective):
    name = "sre2l"
    summary = "SRe2L recovery: match a teacher's batch-norm statistics (needs --teacher)"

    @dataclass(frozen=True)
    class Settings:
        teacher: str | None = teacher_setting()
        r_bn: float = setting(
            0.01, "--r-bn", "sre2l: weight of the batch-norm statistics term (reference: 0.01)."
        )
        first_bn_multiplier: float = setting(10.0)  # the first batch-norm layer's weight
        batch: int = setting(100)  # decoded images per teacher batch (reference: 100)
        crop_scale: float = setting(0.08)  # smallest crop area, a fraction (reference: 0.08)
        jitter: int = setting(4)  # largest random shift in pixels (reference: 4 at 32/64 px)
        beta1: float = setting(0.5)  # Adam
        beta2: float = setting(0.9)
        schedule: str = setting("cosine")  # or "constant"
        clip: bool = setting(True)  # clip the images to the pixel range after each step

    # reference: Adam lr 0.25, images start as Gaussian noise; nothing learns adversarially
    engine_defaults = {"lr_bases": 0.25, "init": "noise", "contrastive": False}

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(context, settings)
        s = self.draft()
        for key in ("r_bn", "first_bn_multiplier", "crop_scale", "beta1", "beta2"):
            if isinstance(s[key], bool) or not isinstance(s[key], (int, float)):
                raise DistillError(f"sre2l: {key} must be a number, got {s[key]!r}")
            s[key] = float(s[key])
        for key in ("batch", "jitter"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise DistillError(f"sre2l: {key} must be an integer, got {s[key]!r}")
        if s["r_bn"] < 0 or s["first_bn_multiplier"] < 0:
            raise DistillError("sre2l: r_bn and first_bn_multiplier must be 0 or more")
        if s["batch"] < 1 or s["jitter"] < 0:
            raise DistillError("sre2l: batch must be at least 1 and jitter 0 or more")
        if not 0 < s["crop_scale"] <= 1:
            raise DistillError(f"sre2l: crop_scale must lie in (0, 1], got {s['crop_scale']}")
        if not (0 <= s["beta1"] < 1 and 0 <= s["beta2"] < 1):
            raise DistillError("sre2l: beta1 and beta2 must lie in [0, 1)")
        if s["schedule"] not in ("cosine", "constant"):
            raise DistillError(f"sre2l: schedule must be cosine or constant, got {s['schedule']!r}")
        if not isinstance(s["clip"], bool):
            raise DistillError(f"sre2l: clip must be true or false, got {s['clip']!r}")
        self.teacher = open_teacher(self.name, s["teacher"], context)
        s["teacher"] = str(s["teacher"])
        self.settings = self.Settings(**s)
        self.statistics = _BatchNormStatistics(self.teacher.net)
        if not self.statistics.layers:
            raise DistillError(
                f"sre2l: the teacher ({self.teacher.arch}) has no batch-norm layer to match"
            )
        self.to_teacher = TeacherInput(
            context.normalization, self.teacher.normalization, context.device
        )
        self.bounds = pixel_bounds(context.normalization, context.device)
        source = context.source
        self.flip = not bool(getattr(source, "is_digits", False))
        self.weights = [s["first_bn_multiplier"]] + [1.0] * (len(self.statistics.layers) - 1)
        self._optimizer: torch.optim.Optimizer | None = None

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "flip": self.flip,
            "optimizer": "adam",
            "teacher": self.teacher.describe(),
        }

    def optimizer_for(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        for group in groups:
            group["base_lr"] = group["lr"]  # the schedule's peak, kept in the checkpoint
        s = self.settings
        self._optimizer = torch.optim.Adam(
            groups, lr=groups[0]["lr"], betas=(s.beta1, s.beta2), eps=1e-8
        )
        return self._optimizer

    def _schedule(self) -> None:
        """Each group's learning rate for this iteration: cosine from its peak to 0 over
        the run (the reference's, without warm-up), or constant."""
        if self._optimizer is None:
            return
        total = self.context.iterations
        # the engine's iteration (the real side is told it before every loss): a resumed
        # run continues the schedule where it stopped
        done = self.context.real.iteration
        factor = 1.0
        if self.settings.schedule == "cosine" and total > 0:
            factor = 0.5 * (1 + math.cos(math.pi * min(done, total) / total))
        for group in self._optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        self._schedule()
        collective = self.context.collective
        basis, variant = _every_pair(synthetic)
        total = basis.numel()
        # Fixed order of draws: the partition, then each batch's crops and shift, all
        # drawn on every rank (so the stream stays in step whichever batches a rank owns).
        whole = total <= self.settings.batch
        order = torch.arange(total) if whole else torch.randperm(total, generator=generator)
        batches = list(order.split(self.settings.batch))
        draws = [self._draw(len(items), generator) for items in batches]
        zero = (synthetic.bases * 0.0).sum()  # a dense zero gradient
        loss, ce_sum, bn_sum = zero, zero.detach(), zero.detach()
        mine = [b for b in range(len(batches)) if b % collective.world_size == collective.rank]
        _, height, width = self.context.image_shape
        owned = sum(len(batches[b]) for b in mine)
        recompute = worth_recomputing(self.teacher.net, owned, height, width, self.settings.batch)
        for b in mine:
            items, (theta, shift) = batches[b], draws[b]
            # every pair in its order (one batched decode), or this batch's pairs
            pairs = (basis, None) if whole else (basis[items], _pick(variant, items))
            batch = (synthetic, pairs, synthetic.item_labels(basis[items]), theta, shift)
            if recompute:  # keep no batch's activations: each is recomputed in backward
                terms = checkpoint(
                    self._batch_terms, *batch, use_reentrant=False, preserve_rng_state=False
                )
            else:
                terms = self._batch_terms(*batch)
            ce, bn = terms[0], terms[1]
            loss = loss + ce + self.settings.r_bn * bn
            ce_sum = ce_sum + ce.detach()
            bn_sum = bn_sum + bn.detach()
        return loss, {"ce": ce_sum, "bn": bn_sum}

    def _batch_terms(
        self,
        synthetic: SyntheticSet,
        pairs: tuple[Tensor, Tensor | None],
        labels: Tensor,
        theta: Tensor,
        shift: tuple[int, int],
    ) -> Tensor:
        """(CE, R_bn) of one batch: its pairs decoded, cropped, shifted, through the teacher."""
        images = synthetic.decode(*pairs)
        images = resized_crops(images, theta, tuple(images.shape[2:]), supersample=1)  # type: ignore[arg-type]
        if shift != (0, 0):
            images = torch.roll(images, shifts=shift, dims=(2, 3))
        return torch.stack(self._terms(images, labels))

    def _draw(self, count: int, generator: torch.Generator) -> tuple[Tensor, tuple[int, int]]:
        """One batch's augmentation: a random resized crop per image (flipped except on
        digits), and one shift for the batch (the reference's jitter)."""
        s = self.settings
        theta = crop_boxes(
            count, generator, scale=(s.crop_scale, 1.0), ratio=(3 / 4, 4 / 3), flip=self.flip
        )
        shift = (0, 0)
        if s.jitter:
            a, b = torch.randint(-s.jitter, s.jitter + 1, (2,), generator=generator).tolist()
            shift = (int(a), int(b))
        return theta, shift

    def _terms(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The teacher's cross-entropy on ``images`` and their weighted batch-norm
        statistics distance R_bn."""
        self.statistics.distances, self.statistics.on = [], True
        try:
            logits = self.teacher.logits(self.to_teacher(images))
        finally:
            self.statistics.on = False
        distances, self.statistics.distances = self.statistics.distances, []
        bn = torch.stack([w * d for w, d in zip(self.weights, distances)]).sum()
        return F.cross_entropy(logits, labels), bn

    def after_step(self, synthetic: SyntheticSet, generator: torch.Generator) -> None:
        """Clip the images to the pixel range (the reference's ``clip``), when the bases
        are pixels (not a frequency stage's coefficients)."""
        if not self.settings.clip or self.bounds is None:
            return
        if any(stage.name == "frequency" for stage in synthetic.pipeline.stages):
            return
        low, high = self.bounds
        with torch.no_grad():
            synthetic.bases.copy_(torch.maximum(torch.minimum(synthetic.bases, high), low))


def _pick(variant: Tensor | None, items: Tensor) -> Tensor | None:
    return None if variant is None else variant[items]


def _every_pair(synthetic: SyntheticSet) -> tuple[Tensor, Tensor | None]:
    """Every (basis, variant) pair, basis-major: (basis indices, variants or None)."""
    n, e = synthetic.bases.shape[0], synthetic.expansion
    basis = torch.arange(n).repeat_interleave(e)
    return basis, (torch.arange(e).repeat(n) if e > 1 else None)
