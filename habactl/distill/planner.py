"""Honest budgets: a budget in bytes -> a pipeline and bases per class.

The budget is counted in bytes. ``--ipc N`` means N float32 images per class:
``N x classes x C x H x W x 4`` bytes; ``--budget-bytes B`` gives B directly. With
``counts="all"`` every stored synthetic byte is charged to it: the bases at their stored
resolution and dtype, every stage parameter, and the soft labels of an objective that
learns them (``label_values`` float32 values per basis; hard labels are not charged: they
are implied by ``bases.per_class``, which is how ``format.account`` counts too). For an
all-float32 pipeline the byte plan is the value plan of earlier versions, exactly.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from habactl.codecs.registry import PRESETS
from habactl.codecs.spec import HALLUCINATE_DEFAULTS, UPSAMPLE_DEFAULTS
from habactl.distill.errors import DistillError
from habactl.format.account import (  # the one home of the budget formula
    FLOAT32_BYTES,
    budget_bytes_for,
    budget_values,
)

CODECS = tuple(PRESETS)  # the codec names are the registry's presets
HALLUCINATOR_ARCHS = ("channel-affine", "pixel-affine")
COUNTS = ("all", "bases")
LEFTOVER = ("bases", "none")
DEFAULT_FACTOR = UPSAMPLE_DEFAULTS["factor"]


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
    # Bytes: the budget, one stored basis, the pipeline's parameters. ``budget_bytes_given``
    # is True when the budget came as --budget-bytes (then ``ipc`` is the smallest IPC
    # whose budget holds it, the figure the archive records).
    budget_bytes: int = 0
    basis_bytes: int = 0
    pipeline_bytes: int = 0
    budget_bytes_given: bool = False
    # Learned soft labels: float32 values stored per basis (0: hard labels, not stored)
    label_values: int = 0
    # A teacher's soft labels written in a storage form (``--labels``): that form's bytes
    # per basis and its name (0 and None: none)
    label_row_bytes: int = 0
    label_form: str | None = None

    @property
    def label_bytes(self) -> int:
        """Bytes of one basis' label (0 with hard labels): learned float32 values, or a
        teacher's soft labels in their storage form."""
        return FLOAT32_BYTES * self.label_values + self.label_row_bytes

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
        """Every stored synthetic value: bases, pipeline parameters and learned labels."""
        return self.bases * (self.base_values + self.label_values) + self.pipeline_values

    @property
    def charged_values(self) -> int:
        """What the budget is charged with under this plan's counting rule."""
        return self.stored_values if self.counts == "all" else self.bases * self.base_values

    @property
    def unspent_values(self) -> int:
        return self.budget_values - self.charged_values

    @property
    def stored_bytes(self) -> int:
        """Every stored synthetic byte: bases, pipeline parameters and learned labels."""
        return self.bases * (self.basis_bytes + self.label_bytes) + self.pipeline_bytes

    @property
    def charged_bytes(self) -> int:
        return self.stored_bytes if self.counts == "all" else self.bases * self.basis_bytes

    @property
    def all_float32(self) -> bool:
        return self.basis_bytes == FLOAT32_BYTES * self.base_values and (
            self.pipeline_bytes == FLOAT32_BYTES * self.pipeline_values
        )

    @property
    def images(self) -> int:
        """Training images the archive expands to."""
        return self.bases * self.expansion

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for provenance.

        The byte figures are added only where they say more than the values (a byte
        budget or a non-float32 part), so that float32 archives stay byte-identical.
        """
        out = {
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
        if self.label_values:  # only then: other plans keep their records as they were
            out.update(label_values=self.bases * self.label_values)
        if self.label_form is not None:
            out.update(labels=self.label_form, label_bytes=self.bases * self.label_row_bytes)
        if self.budget_bytes_given or not self.all_float32 or self.label_form is not None:
            out.update(
                budget_bytes=self.budget_bytes,
                bases_bytes=self.bases * self.basis_bytes,
                pipeline_bytes=self.pipeline_bytes,
                stored_bytes=self.stored_bytes,
                unspent_bytes=self.budget_bytes - self.charged_bytes,
            )
        return out

    def summary(self) -> str:
        """One line for people."""
        c, h, w = self.base_shape
        counts = sorted(set(self.per_class))
        per = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        text = (
            f"{self.codec}: {per} bases/class at {c}x{h}x{w}"
            + (f" x {self.expansion} hallucinators" if self.expansion > 1 else "")
            + f" = {self.images:,} training images; {self.stored_values:,} stored values,"
            f" {self.stored_bytes:,} bytes of a {self.budget_bytes:,}-byte budget"
            + (" (--budget-bytes)" if self.budget_bytes_given else f" (IPC {self.ipc})")
        )
        if self.label_form is not None:
            text += f"; labels {self.label_form}, {self.bases * self.label_row_bytes:,} bytes"
        if self.counts == "bases":
            text += f", counting bases only ({self.charged_bytes:,} bytes charged)"
        return text


def preset_pipeline(
    codec: str,
    *,
    factor: int | None = None,
    hallucinators: int = HALLUCINATE_DEFAULTS["count"],
    arch: str = HALLUCINATE_DEFAULTS["arch"],
    hidden: int = HALLUCINATE_DEFAULTS["hidden"],
    kernel: int = HALLUCINATE_DEFAULTS["kernel"],
) -> list[dict[str, Any]]:
    """The manifest entries of a codec preset (``raw``, ``idc``, ``haba``, ``haba+idc``)
    configured from the command line's stage options."""
    from habactl.codecs.registry import expand_preset

    if codec not in PRESETS:
        raise DistillError(f"unknown codec {codec!r} (known: {', '.join(PRESETS)})")
    stages = PRESETS[codec]
    if "upsample" in stages:
        f = DEFAULT_FACTOR if factor is None else int(factor)
        if f < 1:
            raise DistillError(f"--factor must be at least 1, got {f}")
    elif factor not in (None, 1):
        raise DistillError(f"--factor applies to the idc and haba+idc codecs, not {codec!r}")
    if "hallucinate" in stages:
        if arch not in HALLUCINATOR_ARCHS:
            raise DistillError(
                f"unknown hallucinator architecture {arch!r} "
                f"(known: {', '.join(HALLUCINATOR_ARCHS)})"
            )
        if hallucinators < 1:
            raise DistillError(f"--hallucinators must be at least 1, got {hallucinators}")
    values: dict[str, dict[str, Any]] = {
        "upsample": {} if factor is None else {"factor": int(factor)},
        "hallucinate": {
            "arch": arch,
            "count": int(hallucinators),
            "hidden": int(hidden),
            "kernel": int(kernel),
        },
    }
    return expand_preset(codec, values)


def base_shape_for(
    pipeline: Sequence[dict[str, Any]], image_shape: Sequence[int]
) -> tuple[int, int, int]:
    """The stored bases' shape: the image shape walked back through every stage."""
    from habactl.codecs.registry import get_stage
    from habactl.codecs.spec import check_order
    from habactl.errors import HabaError

    try:  # a stage in the wrong place is refused for its place, before any shape
        check_order(list(pipeline))
    except HabaError as error:
        raise DistillError(str(error)) from None
    c, h, w = (int(s) for s in image_shape)
    shape: tuple[int, int, int] = (c, h, w)
    for entry in reversed(list(pipeline)):
        try:
            stage = get_stage(entry["name"])
            c, h, w = stage.input_shape_for(dict(entry["configuration"]), shape)
            shape = (int(c), int(h), int(w))
        except HabaError as error:
            raise DistillError(str(error)) from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DistillError(
                f"pipeline entry {entry!r} needs a name and a configuration object"
            ) from None
    return shape


def pipeline_for(
    codec: str,
    image_shape: Sequence[int],
    *,
    factor: int | None = None,
    hallucinators: int = HALLUCINATE_DEFAULTS["count"],
    arch: str = HALLUCINATE_DEFAULTS["arch"],
    hidden: int = HALLUCINATE_DEFAULTS["hidden"],
    kernel: int = HALLUCINATE_DEFAULTS["kernel"],
) -> tuple[list[dict[str, Any]], tuple[int, int, int]]:
    """The decode pipeline (manifest entries) and base shape of a codec choice."""
    stages = preset_pipeline(
        codec, factor=factor, hallucinators=hallucinators, arch=arch, hidden=hidden, kernel=kernel
    )
    return stages, base_shape_for(stages, image_shape)


def plan_budget(
    codec: str,
    image_shape: Sequence[int],
    num_classes: int,
    ipc: int,
    *,
    counts: str = "all",
    factor: int | None = None,
    hallucinators: int = HALLUCINATE_DEFAULTS["count"],
    arch: str = HALLUCINATE_DEFAULTS["arch"],
    hidden: int = HALLUCINATE_DEFAULTS["hidden"],
    kernel: int = HALLUCINATE_DEFAULTS["kernel"],
    leftover: str = "bases",
    class_priority: Sequence[int] | None = None,
) -> Plan:
    """Turn a budget of ``ipc`` images per class into bases per class for a codec preset."""
    stages = preset_pipeline(
        codec, factor=factor, hallucinators=hallucinators, arch=arch, hidden=hidden, kernel=kernel
    )
    return plan_pipeline(
        stages,
        image_shape,
        num_classes,
        ipc,
        counts=counts,
        leftover=leftover,
        class_priority=class_priority,
        codec=codec,
    )


def plan_pipeline(
    pipeline: Sequence[dict[str, Any]],
    image_shape: Sequence[int],
    num_classes: int,
    ipc: int,
    *,
    counts: str = "all",
    leftover: str = "bases",
    class_priority: Sequence[int] | None = None,
    codec: str | None = None,
    budget_bytes: int | None = None,
    label_values: int = 0,
    label_form: str | None = None,
) -> Plan:
    """Turn a budget into bases per class for any pipeline of manifest entries (see
    module doc). The budget is ``ipc`` float32 images per class, or ``budget_bytes``
    bytes when given (``ipc`` is then ignored). ``codec`` labels the plan; by default
    the preset the entries match (``registry.preset_name``). ``label_values``: float32
    label values stored with each basis (an objective's learned soft labels; with
    ``counts="all"`` a basis costs them too)."""
    from habactl.codecs.registry import preset_name

    _check_plan_arguments(counts, leftover, ipc, budget_bytes, num_classes)
    stages = [dict(entry) for entry in pipeline]
    try:
        label = codec or preset_name(stages)
    except (KeyError, TypeError):
        raise DistillError("a pipeline entry needs a name, a version and a configuration") from None
    spec, base_shape = _described(stages, image_shape, label)
    c, h, w = (int(s) for s in image_shape)
    from habactl.codecs.spec import pipeline_storage

    pipeline_values = sum(math.prod(shape) for shape in spec.params.values())
    storage = pipeline_storage(spec, base_shape)
    label_values = int(label_values)
    if label_values < 0:
        raise DistillError(f"label values per basis must be 0 or more, got {label_values}")
    row_bytes = _label_row_bytes(label_form, num_classes)
    # what one more basis costs the budget: its stored bytes and, counted, its label
    label_cost = FLOAT32_BYTES * label_values + row_bytes
    per_basis = storage.basis_bytes + (label_cost if counts == "all" else 0)
    pipeline_bytes = storage.param_bytes
    ipc, budget_b, what = _budget(ipc, budget_bytes, num_classes, (c, h, w))
    budget = budget_values(ipc, num_classes, (c, h, w))
    fixed = pipeline_bytes if counts == "all" else 0
    available = budget_b - fixed
    per = available // (num_classes * per_basis) if available > 0 else 0
    if per < 1:
        raise DistillError(
            _too_small(
                what,
                num_classes,
                storage,
                fixed,
                budget_bytes is not None,
                base_shape,
                per_basis,
                None if label_form is None else str(label_form),
            )
        )
    per_class = [per] * num_classes
    extra: list[int] = []
    if leftover == "bases":
        spare = (available - per * num_classes * per_basis) // per_basis
        extra = _extra_classes(spare, num_classes, class_priority)
        for k in extra:
            per_class[k] += 1
    return Plan(
        codec=label,
        image_shape=(c, h, w),
        base_shape=base_shape,
        pipeline=stages,
        per_class=per_class,
        ipc=int(ipc),
        counts=counts,
        budget_values=budget,
        pipeline_values=pipeline_values,
        expansion=int(spec.expansion),
        leftover_policy=leftover,
        extra_classes=extra,
        budget_bytes=budget_b,
        basis_bytes=storage.basis_bytes,
        pipeline_bytes=pipeline_bytes,
        budget_bytes_given=budget_bytes is not None,
        label_values=label_values,
        label_row_bytes=row_bytes,
        label_form=None if label_form is None else str(label_form),
    )


def _label_row_bytes(label_form: str | None, num_classes: int) -> int:
    """Bytes of one soft-label row in ``label_form`` (0 for None: hard labels)."""
    if label_form is None:
        return 0
    from habactl.errors import HabaError
    from habactl.format.labels import parse_form

    try:
        form = parse_form(label_form)
    except HabaError as error:
        raise DistillError(f"--labels: {error}") from None
    if form.k is not None and form.k > num_classes:
        raise DistillError(f"--labels top-k:{form.k}: the data has only {num_classes} classes")
    return form.row_bytes(num_classes)


def _described(
    stages: list[dict[str, Any]], image_shape: Sequence[int], label: str
) -> tuple[Any, tuple[int, int, int]]:
    """The pipeline's description and its bases' shape; DistillError naming the codec
    when the entries do not describe a pipeline that decodes to ``image_shape``."""
    from habactl.codecs.registry import describe_pipeline
    from habactl.errors import HabaError

    try:
        base_shape = base_shape_for(stages, image_shape)
        spec = describe_pipeline(stages, base_shape)
    except HabaError as error:
        raise DistillError(f"codec {label}: {error}") from None
    c, h, w = (int(s) for s in image_shape)
    if tuple(spec.out_shape) != (c, h, w):
        raise DistillError(
            f"codec {label}: the pipeline decodes to {list(spec.out_shape)}, "
            f"not the images' {[c, h, w]}"
        )
    return spec, base_shape


def _budget(
    ipc: int, budget_bytes: int | None, num_classes: int, image_shape: tuple[int, int, int]
) -> tuple[int, int, str]:
    """The IPC, the budget in bytes and how a message names it: from ``ipc`` float32
    images per class, or from ``budget_bytes`` (then the smallest IPC that holds it)."""
    if budget_bytes is None:
        budget_b = budget_bytes_for(ipc, num_classes, image_shape)
        return (
            ipc,
            budget_b,
            (f"IPC {ipc} is {budget_b // FLOAT32_BYTES:,} stored values ({budget_b:,} bytes)"),
        )
    image_bytes = budget_bytes_for(1, num_classes, image_shape)  # one float32 image per class
    budget_b = int(budget_bytes)
    return max(1, -(-budget_b // image_bytes)), budget_b, f"--budget-bytes {budget_b:,}"


def _check_plan_arguments(
    counts: str, leftover: str, ipc: int, budget_bytes: int | None, num_classes: int
) -> None:
    if counts not in COUNTS:
        raise DistillError(f"unknown budget counting {counts!r} (known: {', '.join(COUNTS)})")
    if leftover not in LEFTOVER:
        raise DistillError(f"unknown leftover policy {leftover!r} (known: {', '.join(LEFTOVER)})")
    if budget_bytes is None and ipc < 1:
        raise DistillError(f"--ipc must be at least 1, got {ipc}")
    if budget_bytes is not None and (isinstance(budget_bytes, bool) or budget_bytes < 1):
        raise DistillError(f"--budget-bytes must be at least 1, got {budget_bytes}")
    if num_classes < 1:
        raise DistillError("the data set has no classes")


def _extra_classes(spare: int, num_classes: int, priority: Sequence[int] | None) -> list[int]:
    """The classes that get one basis more from ``spare`` leftover bases: the first of
    ``priority`` (default: class order), ascending."""
    order = list(range(num_classes)) if priority is None else [int(k) for k in priority]
    if sorted(order) != list(range(num_classes)):
        raise DistillError("class_priority must list every class exactly once")
    return sorted(order[:spare])


def _too_small(
    what: str,
    classes: int,
    storage: Any,
    fixed: int,
    byte_budget: bool,
    base_shape: Sequence[int],
    charged_per_basis: int | None = None,
    label_form: str | None = None,
) -> str:
    """The refusal when not one basis per class fits: in values for float32 parts (the
    figures people know), in bytes otherwise. ``charged_per_basis``: what one basis
    costs with its label, when it has one (learned, or a teacher's in ``label_form``)."""
    values = math.prod(base_shape)
    per_basis, params = storage.basis_bytes, storage.param_bytes
    label = (charged_per_basis or per_basis) - per_basis  # a label's bytes
    float32 = per_basis == FLOAT32_BYTES * values and params % FLOAT32_BYTES == 0
    if label_form is not None:  # a teacher's labels: bytes, whatever their form
        hint = (
            "; smaller bases leave room for the labels (--codec idc), "
            "so do fewer label bytes (--labels top-k:K)"
        )
    else:
        hint = "; learned labels cost bytes too (smaller bases: --codec idc)"
    if float32 and not byte_budget and label_form is None:
        unit, extra = "", fixed // FLOAT32_BYTES
        basis = f"{values:,}" + (f" + {label // FLOAT32_BYTES} label values" if label else "")
        needed = classes * (values + label // FLOAT32_BYTES) + extra
    else:
        unit, extra = " bytes", fixed
        basis = f"{per_basis:,} bytes" + (f" + {label} label bytes" if label else "")
        needed = classes * (per_basis + label) + fixed
    return (
        f"budget too small: {what}, but one basis per class ({classes} x {basis})"
        + (f" plus the stage parameters' {extra:,}" if fixed else "")
        + f" needs {needed:,}{unit}; raise "
        + ("--budget-bytes" if byte_budget else "--ipc")
        + (", use fewer hallucinators or a larger --factor" if fixed else "")
        + (hint if label else "")
    )
