"""The stage contract: a pure description (StageSpec) and the torch module (Stage)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from habactl.codecs.errors import CodecError, quote

Shape = tuple[int, int, int]

# Far above any real image side (the format allows 4096), low enough that shape
# arithmetic in describe() can never produce absurd numbers from a hostile manifest.
MAX_SIDE = 1 << 16
MAX_CHANNELS = 4096

_REQUIRED = object()


class StageSpec(NamedTuple):
    """What a stage will do, computed without allocating anything."""

    name: str
    version: int
    configuration: dict[str, Any]  # normalised: defaults filled in, `x-` keys kept
    in_shape: Shape
    out_shape: Shape
    expansion: int  # outputs per input: 1, or the number of hallucinators
    params: dict[str, tuple[int, ...]]  # parameter name -> shape, all float32


def check_shape(stage: str, shape: Any, what: str = "input shape") -> Shape:
    """A (C, H, W) of positive Python ints within the sanity bounds."""
    if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)) or len(shape) != 3:
        raise CodecError(f"stage {quote(stage)}: {what} must be (C, H, W), got {quote(shape)}")
    out = []
    for i, d in enumerate(shape):
        if isinstance(d, bool) or not isinstance(d, int):
            raise CodecError(f"stage {quote(stage)}: {what} must hold integers, got {quote(shape)}")
        bound = MAX_CHANNELS if i == 0 else MAX_SIDE
        if not 1 <= d <= bound:
            raise CodecError(f"stage {quote(stage)}: {what} {list(shape)} is out of range "
                             f"(channels 1..{MAX_CHANNELS}, sides 1..{MAX_SIDE})")
        out.append(int(d))
    return (out[0], out[1], out[2])


class ConfigReader:
    """Reads one stage configuration key by key; `finish()` rejects what was not read.

    Unknown keys are fatal unless they start with ``x-`` (vendor keys, kept as they are).
    Integers must be JSON integers: a bool or a float is refused, not coerced.
    """

    def __init__(self, stage: str, configuration: Any) -> None:
        if not isinstance(configuration, Mapping):
            raise CodecError(f"stage {quote(stage)}: configuration must be an object, "
                             f"got {type(configuration).__name__}")
        for key in configuration:
            if not isinstance(key, str):
                raise CodecError(f"stage {quote(stage)}: configuration key {quote(key)} is not a string")
        self.stage = stage
        self.source = configuration
        self.out: dict[str, Any] = {}

    def _fail(self, key: str, message: str) -> CodecError:
        return CodecError(f"stage {quote(self.stage)}: configuration {quote(key)} {message}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.source:
            return self.source[key]
        if default is _REQUIRED:
            raise self._fail(key, "is required")
        return default

    def integer(self, key: str, low: int, high: int, default: Any = _REQUIRED,
                odd: bool = False) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, got {quote(value)}")
        if not low <= value <= high:
            raise self._fail(key, f"must be {low}..{high}, got {value}")
        if odd and value % 2 == 0:
            raise self._fail(key, f"must be odd, got {value}")
        self.out[key] = int(value)
        return int(value)

    def choice(self, key: str, options: Sequence[str], default: Any = _REQUIRED) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or value not in options:
            raise self._fail(key, f"must be one of {', '.join(options)}; got {quote(value)}")
        self.out[key] = value
        return value

    def finish(self) -> dict[str, Any]:
        for key, value in self.source.items():
            if key.startswith("x-"):
                self.out[key] = copy.deepcopy(value)
            elif key not in self.out:
                raise self._fail(key, "is not a known key (vendor keys start with 'x-')")
        return dict(sorted(self.out.items()))


class Stage(nn.Module):
    """One decode step, built from its registry name and configuration only.

    Subclasses implement `describe` (pure validation + shapes), `reset_parameters`
    (the default initialisation) and `forward`; expanding stages also `forward_all`.
    """

    name: ClassVar[str]
    version: ClassVar[int]

    def __init__(self, spec: StageSpec) -> None:
        super().__init__()
        self.spec = spec

    # -- description ---------------------------------------------------------------
    @classmethod
    def describe(cls, configuration: dict[str, Any], in_shape: Any) -> StageSpec:
        raise NotImplementedError

    @classmethod
    def from_config(cls, configuration: dict[str, Any], in_shape: Any, *,
                    generator: torch.Generator | None = None, noise: float = 0.0) -> Stage:
        """The stage with its default initialisation, plus `noise`·N(0, 1) on every
        parameter when `noise` > 0 (so that several hallucinators start apart)."""
        stage = cls(cls.describe(configuration, in_shape))
        stage.reset_parameters()
        if noise:
            stage.init_noise(noise, generator)
        return stage

    def to_config(self) -> dict[str, Any]:
        return copy.deepcopy(self.spec.configuration)

    @property
    def expansion(self) -> int:
        return self.spec.expansion

    @property
    def in_shape(self) -> Shape:
        return self.spec.in_shape

    @property
    def out_shape(self) -> Shape:
        return self.spec.out_shape

    def extra_repr(self) -> str:
        return f"{self.name} v{self.version} {self.spec.configuration} {self.in_shape}->{self.out_shape}"

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
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise CodecError(f"stage {quote(self.name)}: tensors do not match the configuration "
                             f"(missing {missing}, unexpected {[quote(k) for k in extra]})")
        own = self.named_tensors()
        for key, shape in expected.items():
            value = tensors[key]
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise CodecError(f"stage {quote(self.name)}: tensor {quote(key)} must be a float tensor")
            if tuple(value.shape) != tuple(shape):
                raise CodecError(f"stage {quote(self.name)}: tensor {quote(key)} has shape "
                                 f"{list(value.shape)}, the configuration needs {list(shape)}")
            if not bool(torch.isfinite(value).all()):
                raise CodecError(f"stage {quote(self.name)}: tensor {quote(key)} holds NaN or Inf")
            own[key].copy_(value)

    # -- decoding ------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise CodecError(f"stage {quote(self.name)}: input must be (N, {', '.join(map(str, self.in_shape))}), "
                             f"got {got}")

    def forward(self, x: Tensor, variant: Tensor | None = None) -> Tensor:  # noqa: D401
        raise NotImplementedError

    def forward_all(self, x: Tensor) -> Tensor:
        """Every sample through every variant, item b·E + v; expansion-1 stages: forward."""
        return self.forward(x)
