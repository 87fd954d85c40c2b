"""Stage names -> classes, and the pure description of a whole pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from habactl.codecs.base import Shape, Stage, StageSpec, check_shape
from habactl.codecs.errors import CodecError, quote
from habactl.codecs.hallucinate import Hallucinate
from habactl.codecs.upsample import Upsample

STAGES: dict[str, type[Stage]] = {cls.name: cls for cls in (Upsample, Hallucinate)}

ENTRY_KEYS = ("name", "version", "configuration")


class PipelineSpec(NamedTuple):
    """What a pipeline decodes to, computed without allocating anything."""

    stages: list[StageSpec]
    out_shape: Shape
    expansion: int
    params: dict[str, tuple[int, ...]]  # "pipeline.{i}.{param}" -> shape


def get_stage(name: str) -> type[Stage]:
    """The class registered under `name`; CodecError for an unknown name."""
    if isinstance(name, str) and name in STAGES:
        return STAGES[name]
    raise CodecError(f"unknown stage {quote(name)} (known: {', '.join(sorted(STAGES))})")


def describe_entry(entry: Any, in_shape: Any) -> StageSpec:
    """Validate one `{"name", "version", "configuration"}` entry and describe its stage."""
    if not isinstance(entry, Mapping):
        raise CodecError(f"a pipeline entry must be an object, got {type(entry).__name__}")
    for key in entry:
        if not isinstance(key, str) or (key not in ENTRY_KEYS and not key.startswith("x-")):
            raise CodecError(f"pipeline entry key {quote(key)} is not known "
                             "(vendor keys start with 'x-')")
    for key in ENTRY_KEYS:
        if key not in entry:
            raise CodecError(f"pipeline entry lacks {quote(key)}")
    cls = get_stage(entry["name"])
    version = entry["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CodecError(f"stage {quote(cls.name)}: version must be a positive integer, got {quote(version)}")
    if version > cls.version:
        raise CodecError(f"stage {quote(cls.name)} version {version} is newer than this habactl "
                         f"supports ({cls.version}); upgrade habactl to read it")
    return cls.describe(entry["configuration"], in_shape)


def describe_pipeline(pipeline: Any, base_shape: Any) -> PipelineSpec:
    """Validate a manifest pipeline and report shapes, expansion and parameter shapes.

    Pure: nothing is allocated, so the format reader can check tensor shapes and the
    expanded size against its limits before reading a byte of tensor data.
    """
    if not isinstance(pipeline, (list, tuple)):
        raise CodecError(f"the pipeline must be a list, got {type(pipeline).__name__}")
    shape = check_shape("pipeline", base_shape, "base shape")
    stages: list[StageSpec] = []
    params: dict[str, tuple[int, ...]] = {}
    expansion = 1
    for i, entry in enumerate(pipeline):
        try:
            spec = describe_entry(entry, shape)
        except CodecError as error:
            raise CodecError(error.detail, index=i) from None
        if spec.expansion > 1 and expansion > 1:
            raise CodecError(f"at most one stage may expand the data set (stage {quote(spec.name)} "
                             f"would multiply {expansion} by {spec.expansion})", index=i)
        expansion *= spec.expansion
        stages.append(spec)
        params.update({f"pipeline.{i}.{name}": s for name, s in spec.params.items()})
        shape = spec.out_shape
    return PipelineSpec(stages, shape, expansion, params)
