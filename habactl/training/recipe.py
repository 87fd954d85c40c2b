"""The training recipe an archive records, as one typed object.

A distilled set trains well only with the recipe it was made for: the learning rate
(the learned one when the objective made one), the epochs and the step schedule, the
DSA augmentation applied to every batch (never mirrored for digits), the loss that
matches the label kind, and the normalisation (or ZCA) of real test images. `Recipe`
gathers all of it from the manifest, so a user's own training loop gets the same
training as ``habactl evaluate``.

This module does not import torch: ``habactl inspect`` shows the recipe without it.
The methods that build torch objects (`augmentation`, `loss`, `optimizer`, `scheduler`)
import it when called.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from habactl.evaluation.protocol import STANDARD
from habactl.format.view import Manifest

if TYPE_CHECKING:  # only for annotations: importing them would import torch
    import torch

    from habactl.evaluation.protocol import Protocol
    from habactl.training.augment import BatchAugment

# The DSA that `habactl evaluate` applies to every training batch: every op group of
# habactl.training.augment with its default parameters, one draw per image. These copies keep this
# module torch-free; tests/test_recipe.py checks that they equal habactl.training.augment's.
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DSA_PARAMS: dict[str, float] = {
    "brightness": 1.0,
    "saturation": 2.0,
    "contrast": 0.5,
    "crop_pad": 0.125,
    "cutout": 0.5,
    "flip_prob": 0.5,
    "scale": 1.2,
    "rotate": 15.0,
}
# Registry data sets whose images must not be mirrored (habactl.data marks them
# is_digits). Used only when the manifest does not record the flip decision itself;
# tests/test_recipe.py checks the list against the data registry.
DIGIT_DATASETS = frozenset({"mnist-5k", "digits", "mnist", "kmnist", "svhn"})
# The evaluation protocol's step schedule multiplies the lr by this factor once; the
# manifest records when (lr_decay_at), the factor is the protocol's (torch-free module).
LR_DECAY = STANDARD.lr_decay
DEFAULT_LR_DECAY_AT = STANDARD.lr_decay_at


@dataclass(frozen=True)
class DSA:
    """Differentiable Siamese augmentation as the recipe applies it to training batches.

    Each call on a batch picks one op group of `strategy` and draws its values per image
    (`per_sample`), exactly as ``habactl evaluate`` does. `flip` False drops the mirror
    op (digits, characters).
    """

    strategy: str
    flip: bool
    params: Mapping[str, float]
    per_sample: bool = True

    @property
    def ops(self) -> tuple[str, ...]:
        """The op groups one draw chooses from, flip removed when it is off."""
        return tuple(op for op in self.strategy.split("_") if self.flip or op != "flip")

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "ops": list(self.ops),
            "flip": self.flip,
            "params": dict(self.params),
            "per_sample": self.per_sample,
        }


@dataclass(frozen=True)
class Recipe:
    """How to train a network on an archive's images (see the module docstring).

    Build one with :meth:`from_manifest` (or read ``HabaDataset(...).recipe``); change a
    field with :meth:`with_` (e.g. ``recipe.with_(epochs=300)``: the schedule follows).
    """

    arch: str  # the network the archive was distilled and evaluated with
    epochs: int
    batch_size: int
    lr: float  # the learned lr when the archive has one
    lr_source: str  # "learned" or "recommended"
    momentum: float
    weight_decay: float
    lr_decay_at: float  # fraction of the epochs after which lr *= lr_decay
    lr_decay: float
    dsa: DSA | None  # None: no augmentation recorded
    labels: str  # "hard" (class indices) or "soft" (class probabilities)
    normalization: Mapping[str, Any]  # kind (none / mean-std / zca), mean, std, eps
    num_classes: int
    image_shape: tuple[int, int, int]
    dataset: str  # the data set the archive was made from (its test split)
    objective: str
    optimizer_name: str = field(default="sgd")

    # -- building -----------------------------------------------------------------------
    @classmethod
    def from_manifest(cls, manifest: Manifest | Mapping[str, Any]) -> Recipe:
        """The recipe recorded in a (validated) manifest: an archive's ``info``, or the
        parsed JSON."""
        m = manifest if isinstance(manifest, Manifest) else Manifest.from_json(manifest)
        recommended = m.training.recommended
        learned = m.training.learned_lr
        provenance = m.provenance
        dsa = None
        if recommended.augmentation.lower() != "none":
            flip = _flip(provenance.hyperparameters, provenance.dataset)
            dsa = DSA(DSA_STRATEGY, flip, dict(DSA_PARAMS))
        return cls(
            arch=recommended.arch,
            epochs=recommended.epochs,
            batch_size=recommended.batch_size,
            lr=float(learned if learned is not None else recommended.lr),
            lr_source="learned" if learned is not None else "recommended",
            momentum=recommended.momentum,
            weight_decay=recommended.weight_decay,
            lr_decay_at=(
                DEFAULT_LR_DECAY_AT if recommended.lr_decay_at is None else recommended.lr_decay_at
            ),
            lr_decay=LR_DECAY,
            dsa=dsa,
            labels=m.label_kind,
            normalization=m.normalization.to_json(),
            num_classes=len(m.classes),
            image_shape=m.image.shape,
            dataset=provenance.dataset,
            objective=provenance.objective,
        )

    def with_(self, **changes: Any) -> Recipe:
        """A copy with the given fields changed; None values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    # -- the schedule ---------------------------------------------------------------------
    @property
    def decay_epoch(self) -> int:
        """First 0-based epoch trained at the decayed lr (500 of 1,000)."""
        return int(self.epochs * self.lr_decay_at)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 0-based `epoch`."""
        return self.lr * self.lr_decay if epoch >= self.decay_epoch else self.lr

    @property
    def loss_name(self) -> str:
        return (
            "cross-entropy against the stored class probabilities"
            if self.labels == "soft"
            else "cross-entropy"
        )

    # -- views ----------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists, not tuples)."""
        return {
            "arch": self.arch,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer_name,
            "lr": self.lr,
            "lr_source": self.lr_source,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "schedule": {
                "kind": "step",
                "lr_decay_at": self.lr_decay_at,
                "lr_decay": self.lr_decay,
                "decay_epoch": self.decay_epoch,
            },
            "augmentation": None if self.dsa is None else {"kind": "dsa", **self.dsa.as_dict()},
            "labels": self.labels,
            "loss": self.loss_name,
            "normalization": {k: v for k, v in self.normalization.items()},
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "dataset": self.dataset,
            "objective": self.objective,
        }

    def lines(self) -> list[str]:
        """A readable, indented listing (for ``habactl inspect``)."""
        norm = self.normalization
        kind = norm.get("kind", "none")
        if kind == "none":
            norm_text = "none (test images as they are, in [0, 1])"
        else:
            norm_text = (
                f"{kind}, mean {_numbers(norm.get('mean', []))}, "
                f"std {_numbers(norm.get('std', []))}"
            )
            if kind == "zca":
                norm_text += f", eps {norm.get('eps'):g} (whitening matrix stored in the archive)"
        if self.dsa is None:
            aug = ["augmentation  none"]
        else:
            p = self.dsa.params
            params = ", ".join(
                f"{k} {v:g}" for k, v in p.items() if self.dsa.flip or k != "flip_prob"
            )
            aug = [
                f"augmentation  DSA, one op per batch, drawn per image, "
                f"{'with' if self.dsa.flip else 'no'} flip",
                f"  ops         {', '.join(self.dsa.ops)}",
                *textwrap.wrap(
                    params, 88, initial_indent="  params      ", subsequent_indent=" " * 14
                ),
            ]
        return [
            f"network       {self.arch} (the archive was distilled with it; any network works)",
            f"epochs        {self.epochs}, batch {self.batch_size}",
            f"optimizer     SGD, lr {self.lr:g} ({self.lr_source}), momentum {self.momentum:g}, "
            f"weight decay {self.weight_decay:g}",
            f"schedule      lr x {self.lr_decay:g} from epoch {self.decay_epoch} "
            f"({self.lr_decay_at:g} of the epochs)",
            *aug,
            f"labels        {self.labels}; loss: {self.loss_name}",
            f"test images   {norm_text}",
        ]

    def protocol(self, **changes: Any) -> Protocol:
        """The same training as an evaluation `Protocol` (for ``evaluate_archive``)."""
        from habactl.evaluation.protocol import Protocol

        base = Protocol(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            lr_decay_at=self.lr_decay_at,
            lr_decay=self.lr_decay,
            augmentation="none" if self.dsa is None else "dsa",
        )
        return base.with_(**changes)

    # -- torch objects (torch is imported here, not at module import) ---------------------
    def augmentation(self, seed: int = 0) -> BatchAugment:
        """The recorded DSA as a batch transform, reproducible from `seed`.

        Call it on a batch of images (N, C, H, W) on any device, or pass its ``collate``
        as a DataLoader's ``collate_fn`` to augment in the workers. With no augmentation
        recorded it returns the batch unchanged.
        """
        from habactl.training.augment import BatchAugment, SiameseAugment

        if self.dsa is None:
            return BatchAugment(SiameseAugment("none"), seed=seed)
        augmenter = SiameseAugment(self.dsa.strategy, flip=self.dsa.flip, **dict(self.dsa.params))
        return BatchAugment(augmenter, seed=seed, per_sample=self.dsa.per_sample)

    def loss(self) -> torch.nn.Module:
        """The loss for the archive's labels: cross-entropy against class indices (hard)
        or against the stored class probabilities (soft), averaged over the batch.

        ``torch.nn.CrossEntropyLoss`` takes either target: (N,) integer classes or (N,
        classes) probabilities, where it computes ``-(p * log_softmax(logits)).sum(1)
        .mean()``, which is what ``habactl evaluate`` trains with.
        """
        import torch

        return torch.nn.CrossEntropyLoss()

    def optimizer(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        """SGD with the recipe's lr, momentum and weight decay."""
        import torch

        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The step schedule; call ``.step()`` once at the end of every epoch."""
        import torch

        factor = _StepFactor(self.decay_epoch, self.lr_decay)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _StepFactor:
    """lr factor of an epoch: 1 before `decay_epoch`, `decay` from it on (picklable)."""

    def __init__(self, decay_epoch: int, decay: float) -> None:
        self.decay_epoch = decay_epoch
        self.decay = decay

    def __call__(self, epoch: int) -> float:
        return self.decay if epoch >= self.decay_epoch else 1.0


def _flip(hyperparameters: Mapping[str, Any], dataset: str) -> bool:
    """Whether mirroring is allowed: as recorded by the distillation, else by data set."""
    recorded = hyperparameters.get("augmentation")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("flip"), bool):
        return bool(recorded["flip"])
    return dataset.lower() not in DIGIT_DATASETS


def _numbers(values: Iterable[float]) -> str:
    return ", ".join(f"{float(v):g}" for v in values) or "-"


__all__ = ["DIGIT_DATASETS", "DSA", "DSA_PARAMS", "DSA_STRATEGY", "LR_DECAY", "Recipe"]
