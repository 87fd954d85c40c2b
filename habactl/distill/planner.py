"""Honest budgets: an IPC budget in stored values -> a pipeline and bases per class.

The budget is ``ipc x classes x C x H x W`` float values, the size of IPC real images per
class. With ``counts="all"`` every stored synthetic value is charged to it: the bases at
their stored resolution and every hallucinator weight (hard labels are not charged;
they are implied by ``bases.per_class``, which is how ``format.account`` counts too).
``counts="bases"`` reproduces the reference code, which charges bases only and lets the
hallucinators ride free; ``inspect`` still shows the true account of such an archive.

Order of spending:
1. the pipeline's parameters (fixed by the codec choice);
2. the same number of bases for every class, as many as fit;
3. the leftover (``leftover="bases"``, the default): one more basis for as many classes
   as it pays for, in ``class_priority`` order. The engine passes the classes sorted by
   the spread of their real images (most varied first), so the extra bases go where one
   basis covers the least. ``leftover="none"`` keeps classes equal and the rest unspent.
The plan refuses when not even one basis per class fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from habactl.distill.errors import DistillError

CODECS = ("raw", "idc", "haba", "haba+idc")
HALLUCINATOR_ARCHS = ("channel-affine", "pixel-affine")
COUNTS = ("all", "bases")
LEFTOVER = ("bases", "none")
DEFAULT_FACTOR = 2


@dataclass(frozen=True)
class Plan:
    """What will be stored, and how it adds up against the budget."""

    codec: str
    image_shape: tuple[int, int, int]
    base_shape: tuple[int, int, int]
    pipeline: list[dict[str, Any]]
    per_class: list[int]
    ipc: int
    counts: str
    budget_values: int
    pipeline_values: int
    expansion: int
    leftover_policy: str
    extra_classes: list[int] = field(default_factory=list)

    @property
    def classes(self) -> int:
        return len(self.per_class)

    @property
    def base_values(self) -> int:
        return math.prod(self.base_shape)

    @property
    def bases(self) -> int:
        return sum(self.per_class)

    @property
    def stored_values(self) -> int:
        """Every stored synthetic value: bases plus pipeline parameters."""
        return self.bases * self.base_values + self.pipeline_values

    @property
    def charged_values(self) -> int:
        """What the budget is charged with under this plan's counting rule."""
        return self.stored_values if self.counts == "all" else self.bases * self.base_values

    @property
    def unspent_values(self) -> int:
        return self.budget_values - self.charged_values

    @property
    def images(self) -> int:
        """Training images the archive expands to."""
        return self.bases * self.expansion

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for provenance."""
        return {
            "codec": self.codec,
            "counts": self.counts,
            "budget_values": self.budget_values,
            "base_shape": list(self.base_shape),
            "per_class": list(self.per_class),
            "bases_values": self.bases * self.base_values,
            "pipeline_values": self.pipeline_values,
            "stored_values": self.stored_values,
            "unspent_values": self.unspent_values,
            "leftover": self.leftover_policy,
            "extra_bases_to_classes": list(self.extra_classes),
            "expansion": self.expansion,
        }

    def summary(self) -> str:
        """One line for people."""
        c, h, w = self.base_shape
        counts = sorted(set(self.per_class))
        per = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        text = (f"{self.codec}: {per} bases/class at {c}x{h}x{w}"
                + (f" x {self.expansion} hallucinators" if self.expansion > 1 else "")
                + f" = {self.images:,} training images; {self.stored_values:,} stored values"
                f" of a {self.budget_values:,}-value budget (IPC {self.ipc})")
        if self.counts == "bases":
            text += f", counting bases only ({self.charged_values:,} charged)"
        return text


def pipeline_for(codec: str, image_shape: Sequence[int], *, factor: int | None = None,
                 hallucinators: int = 5, arch: str = "channel-affine", hidden: int = 3,
                 kernel: int = 3) -> tuple[list[dict[str, Any]], tuple[int, int, int]]:
    """The decode pipeline (manifest entries) and base shape of a codec choice."""
    if codec not in CODECS:
        raise DistillError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
    c, h, w = (int(s) for s in image_shape)
    stages: list[dict[str, Any]] = []
    base_shape = (c, h, w)
    if codec in ("idc", "haba+idc"):
        f = DEFAULT_FACTOR if factor is None else int(factor)
        if f < 1:
            raise DistillError(f"--factor must be at least 1, got {f}")
        if h % f or w % f:
            raise DistillError(f"--factor {f} does not divide the image size {h}x{w}; "
                               f"pick a factor that divides both sides")
        base_shape = (c, h // f, w // f)
        stages.append({"name": "upsample", "version": 1,
                       "configuration": {"factor": f, "mode": "bilinear"}})
    elif factor not in (None, 1):
        raise DistillError(f"--factor applies to the idc and haba+idc codecs, not {codec!r}")
    if codec in ("haba", "haba+idc"):
        if arch not in HALLUCINATOR_ARCHS:
            raise DistillError(f"unknown hallucinator architecture {arch!r} "
                               f"(known: {', '.join(HALLUCINATOR_ARCHS)})")
        if hallucinators < 1:
            raise DistillError(f"--hallucinators must be at least 1, got {hallucinators}")
        stages.append({"name": "hallucinate", "version": 1,
                       "configuration": {"arch": arch, "count": int(hallucinators),
                                         "hidden": int(hidden), "kernel": int(kernel)}})
    return stages, base_shape


def plan_budget(codec: str, image_shape: Sequence[int], num_classes: int, ipc: int, *,
                counts: str = "all", factor: int | None = None, hallucinators: int = 5,
                arch: str = "channel-affine", hidden: int = 3, kernel: int = 3,
                leftover: str = "bases",
                class_priority: Sequence[int] | None = None) -> Plan:
    """Turn a budget of ``ipc`` images per class into bases per class (see module doc)."""
    from habactl.codecs.registry import describe_pipeline
    from habactl.errors import HabaError

    if counts not in COUNTS:
        raise DistillError(f"unknown budget counting {counts!r} (known: {', '.join(COUNTS)})")
    if leftover not in LEFTOVER:
        raise DistillError(f"unknown leftover policy {leftover!r} (known: {', '.join(LEFTOVER)})")
    if ipc < 1:
        raise DistillError(f"--ipc must be at least 1, got {ipc}")
    if num_classes < 1:
        raise DistillError("the data set has no classes")
    stages, base_shape = pipeline_for(codec, image_shape, factor=factor, hallucinators=hallucinators,
                                      arch=arch, hidden=hidden, kernel=kernel)
    try:
        spec = describe_pipeline(stages, base_shape)
    except HabaError as error:
        raise DistillError(f"codec {codec}: {error}") from None
    pipeline_values = sum(math.prod(shape) for shape in spec.params.values())
    c, h, w = (int(s) for s in image_shape)
    budget = ipc * num_classes * c * h * w
    per_basis = math.prod(base_shape)
    fixed = pipeline_values if counts == "all" else 0
    available = budget - fixed
    per = available // (num_classes * per_basis) if available > 0 else 0
    if per < 1:
        needed = num_classes * per_basis + fixed
        raise DistillError(
            f"budget too small: IPC {ipc} is {budget:,} stored values, but one basis per class "
            f"({num_classes} x {per_basis:,})"
            + (f" plus the hallucinators' {pipeline_values:,}" if fixed else "")
            + f" needs {needed:,}; raise --ipc"
            + (", use fewer hallucinators or a larger --factor" if fixed else "")
        )
    per_class = [per] * num_classes
    extra: list[int] = []
    if leftover == "bases":
        spare = (available - per * num_classes * per_basis) // per_basis
        order = list(range(num_classes)) if class_priority is None else [int(k) for k in class_priority]
        if sorted(order) != list(range(num_classes)):
            raise DistillError("class_priority must list every class exactly once")
        extra = sorted(order[:spare])
        for k in extra:
            per_class[k] += 1
    return Plan(codec=codec, image_shape=(c, h, w), base_shape=base_shape, pipeline=stages,
                per_class=per_class, ipc=int(ipc), counts=counts, budget_values=budget,
                pipeline_values=pipeline_values, expansion=int(spec.expansion),
                leftover_policy=leftover, extra_classes=extra)
