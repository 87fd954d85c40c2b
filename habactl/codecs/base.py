"""The stage contract: a pure description (StageSpec) and the torch module (Stage)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from habactl.codecs.errors import CodecError, quote

# The pure description lives in spec.py (torch-free); re-exported here for the stages.
from habactl.codecs.spec import (  # noqa: F401
    MAX_CHANNELS,
    MAX_SIDE,
    ConfigReader,
    Shape,
    StageSpec,
    check_shape,
)


@dataclass(frozen=True)
class StageOption:
    """One configuration key of a stage as `habactl compress` offers it.

    A declaration for the planner and the command line; decoding never reads it.
    ``flag`` is None for keys the command line does not offer (a config file still can);
    ``help`` is its help (the default is shown after it), ``min`` the smallest value the
    flag takes. ``habactl compress`` generates the flag from this declaration.
    """

    key: str
    default: Any
    flag: str | None = None
    help: str = ""
    min: int | None = None


class Stage(nn.Module):
    """One decode step, built from its registry name and configuration only.

    Subclasses implement `describe` (pure validation + shapes), `reset_parameters`
    (the default initialisation) and `forward`; expanding stages also `forward_all`.
    """

    name: ClassVar[str]
    version: ClassVar[int]
    # What the compress side needs (the planner and the command line); see StageOption.
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[StageOption, ...]] = ()

    def __init__(self, spec: StageSpec) -> None:
        super().__init__()
        self.spec = spec

    # -- description ---------------------------------------------------------------
    @classmethod
    def describe(cls, configuration: dict[str, Any], in_shape: Any) -> StageSpec:
        raise NotImplementedError

    @classmethod
    def from_config(
        cls,
        configuration: dict[str, Any],
        in_shape: Any,
        *,
        generator: torch.Generator | None = None,
        noise: float = 0.0,
    ) -> Stage:
        """The stage with its default initialisation, plus `noise`·N(0, 1) on every
        parameter when `noise` > 0 (so that several hallucinators start apart)."""
        stage = cls(cls.describe(configuration, in_shape))
        stage.reset_parameters()
        if noise:
            stage.init_noise(noise, generator)
        return stage

    # -- declarations for the compress side (planner, command line) ------------------
    @classmethod
    def configure(cls, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A configuration from option values by key, the declared defaults for the rest."""
        values = dict(values or {})
        return {opt.key: values.get(opt.key, opt.default) for opt in cls.options}

    @classmethod
    def input_shape_for(cls, configuration: dict[str, Any], out_shape: Shape) -> Shape:
        """The input shape that decodes to `out_shape` (the planner walks the pipeline
        backwards from the image shape); shape-preserving stages keep it."""
        return tuple(out_shape)  # type: ignore[return-value]

    @classmethod
    def parameter_values(cls, configuration: dict[str, Any], in_shape: Any) -> int:
        """Stored float values of the stage's parameters for this configuration."""
        params = cls.describe(configuration, in_shape).params
        return sum(math.prod(shape) for shape in params.values())

    def to_config(self) -> dict[str, Any]:
        return copy.deepcopy(self.spec.configuration)

    @property
    def expansion(self) -> int:
        return self.spec.expansion

    @property
    def per_class(self) -> bool:
        """True for a stage that decodes each basis through its class's tensors: it is
        called as ``stage(x, None, classes=...)`` (a per-class frequency mask)."""
        return False

    @property
    def in_shape(self) -> Shape:
        return self.spec.in_shape

    @property
    def out_shape(self) -> Shape:
        return self.spec.out_shape

    def extra_repr(self) -> str:
        shapes = f"{self.in_shape}->{self.out_shape}"
        return f"{self.name} v{self.version} {self.spec.configuration} {shapes}"

    # -- parameters ----------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Default initialisation; parameter-free stages have nothing to do."""

    @torch.no_grad()
    def init_noise(self, std: float, generator: torch.Generator | None = None) -> None:
        """Add std·N(0, 1) to every parameter (in name order, so seeds reproduce)."""
        if not std >= 0:
            raise CodecError(f"stage {quote(self.name)}: noise std must be >= 0, got {std}")
        for _, p in sorted(self.named_parameters()):
            p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def named_tensors(self) -> dict[str, Tensor]:
        """Parameter name -> the live parameter (callers detach before saving)."""
        return dict(self.named_parameters())

    @torch.no_grad()
    def load_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        """Copy stored tensors in; names and shapes must match the spec exactly."""
        expected = self.spec.params
        require_names(
            expected, tensors, f"stage {quote(self.name)}: tensors do not match the configuration"
        )
        own = self.named_tensors()
        for key, shape in expected.items():
            value = tensors[key]
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise CodecError(
                    f"stage {quote(self.name)}: tensor {quote(key)} must be a float tensor"
                )
            if tuple(value.shape) != tuple(shape):
                raise CodecError(
                    f"stage {quote(self.name)}: tensor {quote(key)} has shape "
                    f"{list(value.shape)}, the configuration needs {list(shape)}"
                )
            if not bool(torch.isfinite(value).all()):
                raise CodecError(f"stage {quote(self.name)}: tensor {quote(key)} holds NaN or Inf")
            own[key].copy_(value)

    # -- decoding ------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise CodecError(
                f"stage {quote(self.name)}: input must be "
                f"(N, {', '.join(map(str, self.in_shape))}), "
                f"got {got}"
            )

    def forward(self, x: Tensor, variant: Tensor | None = None) -> Tensor:  # noqa: D401
        raise NotImplementedError

    def forward_all(self, x: Tensor) -> Tensor:
        """Every sample through every variant, item b·E + v; expansion-1 stages: forward."""
        return self.forward(x)


def require_names(expected: Mapping[str, Any], tensors: Mapping[str, Any], mismatch: str) -> None:
    """CodecError ``mismatch (missing [...], unexpected [...])`` unless ``tensors`` has
    exactly the names of ``expected``."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CodecError(f"{mismatch} (missing {missing}, unexpected {[quote(k) for k in extra]})")
