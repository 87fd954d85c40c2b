"""The evaluation protocol: how a network is trained on a synthetic set and scored.

The standard protocol of the field (docs/method.md): SGD momentum 0.9, weight decay 5e-4,
batch 256, 1,000 epochs, lr × 0.1 at half, DSA on every batch, final-epoch accuracy over
5 models. ``STANDARD`` is the one source of these numbers; archives record them as
``training.recommended``.
`--fast` is a quick look: 150 epochs, 2 models (one per core on a 2-core CPU, trained
side by side). On the default 190-image mnist-5k archive it gave 94.80 ± 0.10 against
95.40 ± 0.10 for 300 epochs (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from habactl.errors import HabaError

AUGMENTATIONS = ("dsa", "none")
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
        if self.augmentation not in AUGMENTATIONS:
            raise HabaError(
                f"unknown augmentation {self.augmentation!r} (known: {', '.join(AUGMENTATIONS)})"
            )

    @property
    def decay_epoch(self) -> int:
        """First epoch (0-based) trained at the decayed lr: 500 of 1,000."""
        return int(self.epochs * self.lr_decay_at)

    def lr_at(self, epoch: int, lr: float | None = None) -> float:
        """The learning rate of 0-based `epoch` (step schedule: × lr_decay at decay_epoch)."""
        base = self.lr if lr is None else lr
        return base * self.lr_decay if epoch >= self.decay_epoch else base

    def with_(self, **changes: Any) -> Protocol:
        """A copy with the given fields changed; None values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def full_data(self, epochs: int | None = None) -> Protocol:
        """The protocol of the `full` baseline: same settings, fewer epochs (see above)."""
        return replace(self, epochs=epochs or full_data_epochs(self.epochs))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def recommended(self, arch: str = STANDARD_ARCH) -> dict[str, Any]:
        """This protocol as an archive's ``training.recommended`` entry (format/SPEC.md)."""
        return {
            "arch": arch,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "lr_decay_at": self.lr_decay_at,
            "augmentation": self.augmentation,
        }


STANDARD = Protocol()
FAST = replace(STANDARD, epochs=150, models=2)
PRESETS: dict[str, Protocol] = {"standard": STANDARD, "fast": FAST}


def full_data_epochs(epochs: int) -> int:
    return max(1, epochs // FULL_DATA_EPOCH_DIVISOR)


__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_LR",
    "FAST",
    "STANDARD_ARCH",
    "FULL_DATA_EPOCH_DIVISOR",
    "PRESETS",
    "Protocol",
    "STANDARD",
    "full_data_epochs",
]
