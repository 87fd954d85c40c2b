"""Stage names -> classes; the pure description of a whole pipeline is in spec.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from habactl.codecs.base import Stage
from habactl.codecs.errors import CodecError, quote
from habactl.codecs.frequency import Frequency
from habactl.codecs.hallucinate import Hallucinate
from habactl.codecs.quantize import Quantize
from habactl.codecs.spec import (  # noqa: F401  (re-exported: the torch-free description)
    DESCRIPTIONS,
    ENTRY_KEYS,
    PipelineSpec,
    describe_entry,
    describe_pipeline,
)
from habactl.codecs.upsample import Upsample

STAGES: dict[str, type[Stage]] = {
    cls.name: cls for cls in (Upsample, Hallucinate, Quantize, Frequency)
}

# The compress side's codec names: each one is a list of stages, configured from the
# stages' declared options (`Stage.options`). An archive stores only the entries.
PRESETS: dict[str, tuple[str, ...]] = {
    "raw": (),
    "idc": ("upsample",),
    "haba": ("hallucinate",),
    "haba+idc": ("upsample", "hallucinate"),
}
# The torch stages and the pure descriptions must name the same stages and versions.
assert {n: c.version for n, c in STAGES.items()} == {n: d.version for n, d in DESCRIPTIONS.items()}


def get_stage(name: str) -> type[Stage]:
    """The class registered under `name`; CodecError for an unknown name."""
    if isinstance(name, str) and name in STAGES:
        return STAGES[name]
    raise CodecError(f"unknown stage {quote(name)} (known: {', '.join(sorted(STAGES))})")


def expand_preset(
    preset: str, values: Mapping[str, Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """A preset's manifest entries; `values` maps a stage name to option values by key."""
    if preset not in PRESETS:
        raise CodecError(f"unknown codec {quote(preset)} (known: {', '.join(PRESETS)})")
    values = values or {}
    return [
        {
            "name": name,
            "version": STAGES[name].version,
            "configuration": STAGES[name].configure(values.get(name)),
        }
        for name in PRESETS[preset]
    ]


def preset_name(pipeline: Any) -> str:
    """The preset whose stages `pipeline` has, in order; else the stage names joined by +."""
    names = tuple(entry["name"] for entry in pipeline)
    for preset, stages in PRESETS.items():
        if stages == names:
            return preset
    return "+".join(names)
