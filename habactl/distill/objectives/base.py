"""The interface every distillation objective implements.

The engine owns everything around the objective: the stored tensors and their
optimiser, checkpoints, RNG streams, the contrastive term, progress and the archive.
An objective only says, once per iteration, how far the synthetic set is from the real
one. Objectives that train networks of their own (gradient matching) keep them as
state and update them in ``after_step``; objectives that learn something besides the
stored tensors (trajectory matching's learning rate) add optimiser groups through
``param_groups`` and report it in ``learned_lr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from habactl.distill.errors import DistillError
from habactl.distill.sets import RealSide, SyntheticSet

# One field of an objective's ``Settings``: its default and, when the command line offers
# it, its flag and help (``habactl compress`` generates the flag from it).
from habactl.distill.setting import setting  # noqa: F401  (re-exported for the objectives)
from habactl.runtime.distributed import SINGLE, Collective

# Above this many bytes of activations kept for a backward pass, an objective recomputes
# them in the backward pass instead (DM's synthetic side, sre2l's teacher batches):
# below it the extra forward pass would cost time for no need.
RECOMPUTE_ABOVE = 512 << 20


def worth_recomputing(
    net: torch.nn.Module, images: int, height: int, width: int, chunk: int
) -> bool:
    """Whether ``net``'s activations for ``images`` images of ``height`` x ``width``, passed
    in chunks of ``chunk``, should be recomputed in the backward pass rather than kept:
    more than one chunk, and more than ``RECOMPUTE_ABOVE`` bytes kept (estimated from the
    first conv layer's output, about a sixth of what a conv block keeps)."""
    channels = next((m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)), 128)
    kept = 6 * 4 * channels * images * height * width
    return images > chunk and kept > RECOMPUTE_ABOVE


@dataclass
class Context:
    """What an objective may know about the problem."""

    real: RealSide
    image_shape: tuple[int, int, int]
    num_classes: int
    device: torch.device
    augment: Any  # habactl.training.augment.SiameseAugment
    init_generator: torch.Generator  # for drawing initial state at construction
    ipc: int = 1  # the budget's images per class (gradient matching's loops)
    dataset: Mapping[str, str] | None = None  # {"name", "fingerprint"} of the source
    collective: Collective = SINGLE  # the job's ranks (one process: SINGLE)
    # the plan's bases per class (class-sorted), for state sized by the bases (learned labels)
    per_class: list[int] | None = None
    iterations: int = 0  # the run's --iterations (0: not known; schedules by run fraction)
    # the data source (in memory or a store): for checks of something made on the data
    # (a teacher's classes and image shape); objectives read images through ``real``
    source: Any = None
    # the run's normalisation ({"kind": "mean-std", "mean", "std"}): the space the real
    # side and the decoded synthetic images are in
    normalization: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class NoSettings:
    """An objective without settings of its own."""


class Objective:
    """One distillation objective (see the module doc for the division of labour).

    A subclass declares its surface: ``name``, a one-line ``summary``, ``Settings`` (a
    dataclass of every setting it reads, made with ``setting()``), and
    ``engine_defaults`` (the engine settings it works best with, e.g. ``lr_bases``).
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    # Engine (DistillConfig) values this objective uses unless the user says otherwise.
    engine_defaults: ClassVar[dict[str, Any]] = {}
    # Every setting the objective reads, with its default (derived from ``Settings``).
    defaults: ClassVar[dict[str, Any]] = {}
    # Whether ``loss`` samples the real side (``context.real.sample``) every iteration:
    # then ``--classes-per-iteration`` applies to it.
    samples_real: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defaults = {
            f.name: None if f.default is MISSING else f.default for f in fields(cls.Settings)
        }

    @classmethod
    def options(cls) -> dict[str, str]:
        """Command-line flag -> setting name, for the settings the command line offers."""
        return {
            f.metadata["flag"][-1]: f.name for f in fields(cls.Settings) if f.metadata.get("flag")
        }

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        unknown = sorted(set(settings or {}) - set(self.defaults))
        if unknown:
            raise DistillError(
                f"objective {self.name}: unknown setting(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(self.defaults)) or 'none'})"
            )
        self.context = context
        # An instance of the subclass's ``Settings``: read as ``self.settings.views``.
        self.settings: Any = self.Settings(**dict(settings or {}))

    def draft(self) -> dict[str, Any]:
        """The settings as a dict to check and resolve in ``__init__`` (e.g. a default
        that depends on the data); ``self.settings = self.Settings(**draft)`` ends it."""
        return asdict(self.settings)

    def hyperparameters(self) -> dict[str, Any]:
        """Every value the objective uses, JSON-ready, for the archive's provenance."""
        return asdict(self.settings)

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, Mapping[str, float | Tensor]]:
        """The objective's loss for this iteration (a scalar with a graph to the stored
        tensors) and any metrics worth logging: floats, or scalar tensors on the device,
        which the engine reads with the loss in one transfer. Draw all randomness from
        ``generator``."""
        raise NotImplementedError

    def after_step(self, synthetic: SyntheticSet, generator: torch.Generator) -> None:
        """Called after the stored tensors were updated (e.g. to train an inner network)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Extra optimiser groups for things the objective learns besides the stored tensors."""
        return []

    def optimizer_for(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer | None:
        """The optimiser of every group (the stored tensors' and ``param_groups``'), when
        the objective's method prescribes one (sre2l: Adam); None: the engine's SGD with
        ``--momentum``."""
        return None

    def max_step(self) -> float | None:
        """Largest step of each optimiser group per iteration, as a fraction of the group's
        norm (``habactl.distill.stepbound``; 0 for none there, though a group of
        ``param_groups`` may carry its own ``max_step``); None: no bound at all."""
        return None

    def learned_lr(self) -> float | None:
        """A learned training learning rate to store in the archive, if the objective has one."""
        return None

    @classmethod
    def label_values_per_basis(cls, settings: Mapping[str, Any], num_classes: int) -> int:
        """Label values the archive will store per basis with these settings: ``num_classes``
        for an objective that learns soft labels (the planner charges them to the budget
        before it buys bases), 0 for the hard labels every other objective keeps (implied
        by ``bases.per_class``: not stored as values, not charged)."""
        return 0

    def training_recipe(self, arch: str) -> dict[str, Any] | None:
        """The archive's ``training.recommended`` when the objective's images are meant to
        train with another recipe than the standard one; None: the standard recipe."""
        return None

    def learned_labels(self) -> Tensor | None:
        """Labels the objective learned, (bases, classes) class probabilities in the order
        of the bases, to store as the archive's soft labels; None: the hard labels."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a checkpoint (tensors, numbers, nested dicts)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass
