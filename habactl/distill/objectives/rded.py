"""Selection by a teacher's confidence (RDED, Sun et al. 2024; docs/method.md).

Nothing is optimised. For each class the teacher (``--teacher``, the "observer") looks
at ``crops`` random resized crops of each of ``candidates`` random real images of the
class, scores every crop by its cross-entropy on the class (-log p of the true class:
lower is more confident), keeps each image's best crop, and the class's bases are the
best of those. A crop is cut at the stored bases' size: with ``--codec idc`` (factor f)
each basis is a crop shrunk to H/f x W/f, so the f x f bases of a class at IPC 1 are the
tiles of RDED's stitched image, and decoding (upsampling) gives the f^2 images the
student sees; the teacher scores a crop as decoded (through the ``upsample`` stage).
With ``--codec raw`` (f = 1) each basis is a whole-size crop.

The selection is the run's first iteration (its loss is a zero with a graph, so the
engine's step changes nothing); archives, budgets, provenance, checkpoints and resume
are the engine's as for any objective. Later iterations change nothing either: the
default is one iteration.

Real images are read through the run's real side, a batch of ``batch`` images at a
time (``RealSide.read_class``): from a store only those images are read, and a class is
never held whole. Which images and crops come from a stream per class derived from one
draw of the objective's stream: the same selection whatever the number of ranks.

With hallucinators (``--codec haba``, ``haba+idc``) the selection fills the bases and
the hallucinators keep their near-identity start (every hallucination of a basis is
about the crop itself): HaBa adds nothing here but costs budget, and says so in the
numbers. A frequency stage stores each crop's kept DCT coefficients; a quantize stage
rounds the crops as it rounds any bases.

Under torchrun the classes split across the ranks (class k on rank k mod N); the ranks'
bases are then summed, so that every rank holds the whole selection.

The archive records the teacher (``provenance.hyperparameters.objective.teacher``) and
that RDED's training recipe distils from it online (``...objective.training_teacher``:
the teacher's description, whose ``bytes`` an honest count of the archive adds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, Objective, setting
from habactl.distill.objectives.teaching import (
    TeacherInput,
    crop_boxes,
    open_teacher,
    resized_crops,
    teacher_setting,
)
from habactl.distill.sets import SyntheticSet
from habactl.runtime.device import derived_generator


class Selection(Objective):
    name = "rded"
    summary = "RDED: real crops a teacher is most confident on (needs --teacher)"

    @dataclass(frozen=True)
    class Settings:
        teacher: str | None = teacher_setting()
        candidates: int = setting(
            300,
            "--candidates",
            "rded: random real images scored per class (all when a class has fewer).",
            min=1,
        )
        crops: int = setting(5, "--crops", "rded: random crops scored per real image.", min=1)
        crop_scale: float = setting(0.08)  # smallest crop area, a fraction (reference: 0.08)
        batch: int = setting(100)  # real images read and scored at a time

    # one iteration does the selection; nothing adversarial runs on real crops
    engine_defaults = {"iterations": 1, "init": "noise", "contrastive": False}

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(context, settings)
        s = self.draft()
        for key in ("candidates", "crops", "batch"):
            if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
                raise DistillError(f"rded: {key} must be an integer of at least 1, got {s[key]!r}")
        if isinstance(s["crop_scale"], bool) or not isinstance(s["crop_scale"], (int, float)):
            raise DistillError(f"rded: crop_scale must be a number, got {s['crop_scale']!r}")
        s["crop_scale"] = float(s["crop_scale"])
        if not 0 < s["crop_scale"] <= 1:
            raise DistillError(f"rded: crop_scale must lie in (0, 1], got {s['crop_scale']}")
        if context.iterations < 1:
            raise DistillError(
                "rded selects in its first iteration: --iterations must be at least 1"
            )
        self.teacher = open_teacher(self.name, s["teacher"], context)
        s["teacher"] = str(s["teacher"])
        self.settings = self.Settings(**s)
        self.to_teacher = TeacherInput(
            context.normalization, self.teacher.normalization, context.device
        )
        self.selected = False

    def hyperparameters(self) -> dict[str, Any]:
        described = self.teacher.describe()
        return {
            **super().hyperparameters(),
            "teacher": described,
            # RDED's student learns from this teacher's outputs on every batch (online KD)
            "training_teacher": {**described, "kd": "online"},
        }

    def training_recipe(self, arch: str) -> dict[str, Any] | None:
        """RDED trains its student by distillation from the teacher, online: the archive
        records the KD recipe and the teacher it needs (name, sha256, bytes)."""
        from habactl.evaluation.protocol import KD, teacher_entry

        return KD.recommended(arch, teacher=teacher_entry(self.teacher))

    def state_dict(self) -> dict[str, Any]:
        return {"selected": self.selected}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.selected = bool(state.get("selected", False))

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        # no gradient (+ 0.0: never -0.0): the engine's step changes nothing
        zero = (synthetic.bases * 0.0).sum() + 0.0
        if self.selected:
            return zero, {}
        key = int(torch.randint(1 << 62, (1,), generator=generator))  # on every rank alike
        metrics = self.select(synthetic, key)
        self.selected = True
        return zero, metrics

    # -- the selection ------------------------------------------------------------------
    def select(self, synthetic: SyntheticSet, key: int) -> dict[str, float]:
        """Fill ``synthetic.bases`` with this rank's classes' best crops (every class's,
        after the sum over the ranks); the mean cross-entropy of the crops kept and of
        every crop scored."""
        collective = self.context.collective
        stages = list(synthetic.pipeline.stages)
        frequency = next((st for st in stages if st.name == "frequency"), None)
        upsample = next((st for st in stages if st.name == "upsample"), None)
        # the crops' shape: the bases' pixels (a frequency stage: what it decodes to)
        pixel_shape = (
            tuple(frequency.out_shape)
            if frequency is not None
            else tuple(synthetic.bases.shape[1:])
        )
        parts, kept, scored, crops_scored = [], 0.0, 0.0, 0
        per_class = synthetic.per_class
        mine = list(range(len(per_class)))[collective.rank :: collective.world_size]
        for k, n in enumerate(per_class):
            if k not in mine:
                parts.append(torch.zeros(n, *pixel_shape, device=synthetic.bases.device))
                continue
            crops, scores, total, count = self._select_class(
                k, n, pixel_shape, upsample, derived_generator("rded", key, f"class-{k}")
            )
            parts.append(crops)
            kept += float(scores.sum())
            scored += total
            crops_scored += count
        chosen = torch.cat(parts)
        if frequency is not None:
            classes = synthetic.labels.to(chosen.device)
            chosen = frequency.analyse(chosen, classes)
        chosen = chosen.to(synthetic.bases.device, synthetic.bases.dtype)
        collective.all_reduce_sum([chosen])
        with torch.no_grad():
            synthetic.bases.copy_(chosen)
        selected = sum(per_class[k] for k in mine)
        return {
            "selected_ce": kept / max(1, selected),
            "scored_ce": scored / max(1, crops_scored),
        }

    def _select_class(
        self,
        k: int,
        n: int,
        shape: tuple[int, ...],
        upsample: Any,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor, float, int]:
        """Class ``k``'s ``n`` best crops of ``shape`` (C, h, w), best first, and their
        cross-entropies; the sum and the count of every crop's."""
        s = self.settings
        real = self.context.real
        count = real.counts[k]
        positions = torch.randperm(count, generator=generator)[: min(s.candidates, count)]
        if n > len(positions) * s.crops:
            raise DistillError(
                f"rded: class {k} needs {n} bases but {len(positions)} images x {s.crops} "
                "crops make fewer; raise --crops"
            )
        _, height, width = self.context.image_shape
        size = (int(shape[1]), int(shape[2]))
        supersample = max(2, -(-height // size[0]), -(-width // size[1]))
        best: Tensor | None = None
        best_key: tuple[Tensor, Tensor] | None = None
        total, seen = 0.0, 0
        for chunk in positions.split(s.batch):
            images = real.read_class(k, chunk)
            theta = crop_boxes(
                len(chunk) * s.crops, generator, scale=(s.crop_scale, 1.0), ratio=None, flip=False
            )
            with torch.no_grad():
                crops = resized_crops(
                    images.repeat_interleave(s.crops, dim=0), theta, size, supersample
                )
                seen_by_teacher = upsample(crops) if upsample is not None else crops
                if tuple(seen_by_teacher.shape[2:]) != (height, width):
                    seen_by_teacher = F.interpolate(
                        seen_by_teacher, size=(height, width), mode="bilinear", align_corners=False
                    )
                logits = self.teacher.logits(self.to_teacher(seen_by_teacher))
                target = torch.full((len(crops),), k, dtype=torch.long, device=logits.device)
                ce = F.cross_entropy(logits, target, reduction="none").float()
            total += float(ce.sum())
            seen += len(ce)
            # each image's crops ranked by confidence: rank 0 is the image's best crop;
            # every image's best come before any image's second best (RDED keeps one
            # crop per image; the rest only fill in when a class has too few images)
            per_image = ce.view(len(chunk), s.crops)
            rank = per_image.argsort(dim=1, stable=True).argsort(dim=1).flatten()
            pool = crops if best is None else torch.cat([best, crops])
            pool_ce = ce if best_key is None else torch.cat([best_key[0], ce])
            pool_rank = rank if best_key is None else torch.cat([best_key[1], rank])
            order = pool_ce.argsort(stable=True)
            order = order[pool_rank[order].argsort(stable=True)][:n]
            best, best_key = pool[order], (pool_ce[order], pool_rank[order])
        assert best is not None and best_key is not None
        return best, best_key[0], total, seen
