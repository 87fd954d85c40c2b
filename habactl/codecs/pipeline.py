"""Pipeline: an ordered list of stages turning stored bases into training images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from habactl.codecs.base import Shape, Stage, require_names
from habactl.codecs.errors import CodecError
from habactl.codecs.registry import PipelineSpec, describe_pipeline, get_stage


def basis_classes(per_class: list[int]) -> Tensor:
    """The class of every basis of a class-sorted set (``bases.per_class``): what a
    per-class pipeline's ``decode(..., classes=)`` takes."""
    counts = torch.tensor([int(n) for n in per_class], dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


class Pipeline(nn.Module):
    """Stages in order; stage i's input shape is stage i-1's output shape.

    The empty pipeline is the raw archive: bases are the images (expansion 1).
    Item order of the expanded set: item b·E + v is basis b through variant v.
    """

    def __init__(self, spec: PipelineSpec, stages: list[Stage], base_shape: Shape) -> None:
        super().__init__()
        self.spec = spec
        self.stages = nn.ModuleList(stages)
        self.base_shape = base_shape
        self.out_shape = spec.out_shape
        self.expansion = spec.expansion
        # What the stored `bases` tensor looks like (a quantize stage packs or narrows it).
        self.stored_shape = tuple(spec.stored_base_shape or base_shape)

    @property
    def stage_list(self) -> list[Stage]:
        """The stages with their type (an nn.ModuleList hides it from a type checker)."""
        return cast(list[Stage], list(self.stages))

    @classmethod
    def from_manifest(
        cls,
        pipeline: list[dict[str, Any]],
        base_shape: Any,
        *,
        generator: torch.Generator | None = None,
        noise: float = 0.0,
    ) -> Pipeline:
        """Build every stage with its default initialisation (plus optional noise);
        stored parameters come in through `load_tensors`."""
        spec = describe_pipeline(pipeline, base_shape)
        stages = [
            get_stage(s.name).from_config(
                s.configuration, s.in_shape, generator=generator, noise=noise
            )
            for s in spec.stages
        ]
        return cls(spec, stages, tuple(int(d) for d in base_shape))  # type: ignore[arg-type]

    def to_manifest(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "version": s.version, "configuration": s.to_config()}
            for s in self.stage_list
        ]

    @property
    def per_class(self) -> bool:
        """True when decoding needs each basis' class (a per-class frequency mask)."""
        return any(stage.per_class for stage in self.stage_list)

    def decode(
        self, bases: Tensor, variant: Tensor | None = None, *, classes: Tensor | None = None
    ) -> Tensor:
        """Basis n through variant[n]: (N, *base_shape) -> (N, *out_shape). ``classes``
        (N,) int64: each basis' class, needed (only) by a per-class stage."""
        self._check(bases)
        out = bases
        for stage in self.stage_list:
            if stage.per_class:  # it stands before any expansion: one class per item
                out = stage(out, None, classes=classes)
                continue
            # Variants index the one expanding stage; the others must not see them
            # (a count-1 hallucinator after it would read them as out of range).
            out = stage(out, variant if stage.expansion > 1 else None)
        return out

    def decode_all(self, bases: Tensor, *, classes: Tensor | None = None) -> Tensor:
        """Every basis through every variant: (N·E, *out_shape), item b·E + v."""
        self._check(bases)
        out = bases
        for stage in self.stage_list:
            if stage.per_class:  # per-class stages lead the pipeline: N items, N classes
                out = stage(out, None, classes=classes)
                continue
            # Stages after the expanding one see N·E items, each already expanded.
            out = stage.forward_all(out)
        return out

    def calibrate(self, bases: Tensor) -> None:
        """Fit a first `quantize` stage's grid to all the float bases (else nothing)."""
        fit = getattr(self.stages[0], "calibrate", None) if len(self.stages) else None
        if fit is not None:
            fit(bases)

    def encode_bases(self, bases: Tensor) -> Tensor:
        """The `bases` tensor as stored: float32 as they are, or a first `quantize`
        stage's codes (its grid fitted to these bases first)."""
        encode = getattr(self.stages[0], "encode", None) if len(self.stages) else None
        if encode is None:
            return bases
        self.calibrate(bases)
        stored: Tensor = encode(bases)
        return stored

    def named_tensors(self) -> dict[str, Tensor]:
        return {
            f"pipeline.{i}.{name}": t
            for i, stage in enumerate(self.stage_list)
            for name, t in stage.named_tensors().items()
        }

    def load_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        """Load every `pipeline.{i}.{param}`; names and shapes must match exactly."""
        require_names(self.spec.params, tensors, "pipeline tensors do not match the manifest")
        for i, stage in enumerate(self.stage_list):
            prefix = f"pipeline.{i}."
            stage.load_tensors(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )

    def parameter_count(self) -> int:
        return sum(stage.parameter_count() for stage in self.stage_list)

    def _check(self, bases: Tensor) -> None:
        # Float bases are being learned (any pipeline); stored codes have the stored shape.
        floating = isinstance(bases, Tensor) and bases.dtype == torch.float32
        shape = self.base_shape if floating else self.stored_shape
        if not isinstance(bases, Tensor) or bases.dim() != 4 or tuple(bases.shape[1:]) != shape:
            got = list(bases.shape) if isinstance(bases, Tensor) else type(bases).__name__
            raise CodecError(f"bases must be (N, {', '.join(map(str, shape))}), got {got}")
