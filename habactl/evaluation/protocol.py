"""The evaluation protocol: how a network is trained on a synthetic set and scored.

The standard protocol of the field (docs/method.md): SGD momentum 0.9, weight decay 5e-4,
batch 256, 1,000 epochs, lr × 0.1 at half, DSA on every batch, final-epoch accuracy over
5 models. ``STANDARD`` is the one source of these numbers; archives record them as
``training.recommended``.
`--fast` is a quick look: 150 epochs, 2 models (one per core on a 2-core CPU, trained
side by side). On the default 190-image mnist-5k archive it gave 94.80 ± 0.10 against
95.40 ± 0.10 for 300 epochs (docs/benchmarks.md).

``KD`` is the teacher-driven paradigm's protocol (RDED's evaluation, docs/objectives.md,
"Training with soft labels"): the KL divergence to the targets at a temperature, AdamW,
a cosine schedule, a random resized crop and flip per image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from habactl.errors import HabaError

AUGMENTATIONS = ("dsa", "none", "rrc_flip")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
LOSSES = ("ce", "kd")  # cross-entropy against the labels; knowledge distillation
KINDS = ("standard", "kd")  # what `evaluate --recipe` chooses between
DEFAULT_LR = 0.01
# The network the standard protocol trains: ConvNet at the depth for the image size (3 up
# to 45 px, 4 at 64, 5 at 128, 6 at 224-256; habactl.nets.registry.convnet_depth).
STANDARD_ARCH = "convnet"

# Training on the whole real set costs (real images / synthetic images) times more per
# epoch: 4,000 vs 10 images on mnist-5k, about 13 minutes per 15 epochs on a busy 2-core
# CPU. Real data needs far fewer passes (15 epochs gave 98.1 % on mnist-5k), so the
# `full` baseline trains for epochs // FULL_DATA_EPOCH_DIVISOR epochs (1,000 -> 20,
# 300 -> 6), never fewer than one; --full-epochs sets it outright.
FULL_DATA_EPOCH_DIVISOR = 50

# The distillation recipe's batch, temperature and quick-look epochs (docs/objectives.md,
# "Training with soft labels", says where each comes from).
KD_BATCH_SIZE = 50
KD_TEMPERATURE = 1.0
KD_CROP_SCALE = 0.5
KD_FAST_EPOCHS = 50


@dataclass(frozen=True)
class Protocol:
    """Everything that decides how one network is trained and scored."""

    epochs: int = 1000
    models: int = 5
    batch_size: int = 256
    lr: float = DEFAULT_LR
    momentum: float = 0.9
    weight_decay: float = 0.0005
    lr_decay_at: float = 0.5  # fraction of the epochs after which lr is multiplied by lr_decay
    lr_decay: float = 0.1
    augmentation: str = "dsa"
    seed: int = 0
    test_batch_size: int = 512
    optimizer: str = "sgd"  # adamw ignores momentum
    schedule: str = "step"  # cosine ignores lr_decay_at and lr_decay
    loss: str = "ce"
    temperature: float = 1.0  # of the kd loss
    crop_scale: float = 0.08  # smallest area fraction of the rrc_flip crop (format/SPEC.md)

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs,
            "models": self.models,
            "batch_size": self.batch_size,
            "test_batch_size": self.test_batch_size,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise HabaError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise HabaError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise HabaError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise HabaError(f"weight decay must not be negative, got {self.weight_decay!r}")
        if not 0 <= self.lr_decay_at <= 1:
            raise HabaError(f"lr_decay_at must lie in [0, 1], got {self.lr_decay_at!r}")
        choices: tuple[tuple[str, str, tuple[str, ...]], ...] = (
            ("augmentation", self.augmentation, AUGMENTATIONS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("loss", self.loss, LOSSES),
        )
        for what, chosen, known in choices:
            if chosen not in known:
                raise HabaError(f"unknown {what} {chosen!r} (known: {', '.join(known)})")
        if not self.temperature > 0:
            raise HabaError(f"temperature must be positive, got {self.temperature!r}")
        if not 0 < self.crop_scale <= 1:
            raise HabaError(f"crop scale must lie in (0, 1], got {self.crop_scale!r}")

    @property
    def kind(self) -> str:
        """The recipe kind (KINDS): "kd" for the distillation loss, else "standard"."""
        return "kd" if self.loss == "kd" else "standard"

    @property
    def decay_epoch(self) -> int:
        """First epoch (0-based) trained at the decayed lr: 500 of 1,000."""
        return int(self.epochs * self.lr_decay_at)

    def lr_at(self, epoch: int, lr: float | None = None) -> float:
        """The learning rate of 0-based `epoch` (step schedule: × lr_decay at decay_epoch;
        cosine: lr · ½(1 + cos(π · epoch / epochs)), set once per epoch as SRe2L does)."""
        base = self.lr if lr is None else lr
        return base * lr_factor(self.schedule, epoch, self.epochs, self.decay_epoch, self.lr_decay)

    def with_(self, **changes: Any) -> Protocol:
        """A copy with the given fields changed; None values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def full_data(self, epochs: int | None = None) -> Protocol:
        """The protocol of the `full` baseline: same settings, fewer epochs (see above)."""
        return replace(self, epochs=epochs or full_data_epochs(self.epochs))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def recommended(
        self, arch: str = STANDARD_ARCH, teacher: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """This protocol as an archive's ``training.recommended`` entry (format/SPEC.md).

        The distillation fields appear only where they differ from the standard recipe
        (all of them for a kd protocol), so a standard entry is what it always was.
        `teacher` ({name, sha256, bytes}, see `teacher_entry`) records the network the
        recipe needs at training time (online distillation)."""
        entry: dict[str, Any] = {
            "arch": arch,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "lr_decay_at": self.lr_decay_at,
            "augmentation": self.augmentation,
        }
        kd = self.kind == "kd"
        if kd:
            entry.update(loss=self.loss, temperature=self.temperature)
        if kd or self.optimizer != STANDARD.optimizer:
            entry["optimizer"] = self.optimizer
        if kd or self.schedule != STANDARD.schedule:
            entry["schedule"] = self.schedule
        if self.augmentation == "rrc_flip":
            entry["crop_scale"] = self.crop_scale
        if teacher is not None:
            entry["teacher"] = {key: teacher[key] for key in ("name", "sha256", "bytes")}
        return entry


def lr_factor(schedule: str, epoch: int, epochs: int, decay_epoch: int, decay: float) -> float:
    """The factor of the base lr in 0-based `epoch` (the one formula of both schedules)."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return decay if epoch >= decay_epoch else 1.0


def teacher_entry(teacher: Any) -> dict[str, Any]:
    """What ``training.recommended.teacher`` records of a loaded teacher
    (habactl.teacher.Teacher): its file's name, sha256 and size in bytes."""
    name = teacher.path.name if getattr(teacher, "path", None) is not None else "teacher"
    return {"name": name, "sha256": teacher.sha256, "bytes": int(teacher.file_bytes)}


STANDARD = Protocol()
FAST = replace(STANDARD, epochs=150, models=2)
PRESETS: dict[str, Protocol] = {"standard": STANDARD, "fast": FAST}

# The teacher-driven paradigm's protocol: RDED's evaluation (LINs-lab/RDED,
# validation/main.py) without its CutMix and patch shuffling, with a full cosine;
# docs/objectives.md compares each setting with RDED's and SRe2L's.
KD = Protocol(
    epochs=300,
    batch_size=KD_BATCH_SIZE,
    lr=0.001,
    weight_decay=0.01,
    augmentation="rrc_flip",
    optimizer="adamw",
    schedule="cosine",
    loss="kd",
    temperature=KD_TEMPERATURE,
    crop_scale=KD_CROP_SCALE,
)
# A quick look with the distillation recipe, as FAST is for the standard one.
KD_FAST = replace(KD, epochs=KD_FAST_EPOCHS, models=2)


def base_protocol(kind: str, *, fast: bool = False) -> Protocol:
    """The preset of a recipe kind: STANDARD / FAST, or KD / KD_FAST."""
    if kind not in KINDS:
        raise HabaError(f"unknown recipe {kind!r} (known: {', '.join(KINDS)})")
    if kind == "kd":
        return KD_FAST if fast else KD
    return FAST if fast else STANDARD


def full_data_epochs(epochs: int) -> int:
    return max(1, epochs // FULL_DATA_EPOCH_DIVISOR)


__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_LR",
    "FAST",
    "KD",
    "KD_FAST",
    "KINDS",
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "base_protocol",
    "lr_factor",
    "teacher_entry",
    "STANDARD_ARCH",
    "FULL_DATA_EPOCH_DIVISOR",
    "PRESETS",
    "Protocol",
    "STANDARD",
    "full_data_epochs",
]
