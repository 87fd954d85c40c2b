"""The training recipe an archive records, as one typed object.

A distilled set trains well only with the recipe it was made for: the learning rate
(the learned one when the objective made one), the epochs and the step schedule, the
DSA augmentation applied to every batch (never mirrored for digits), the loss that
matches the label kind, and the normalisation (or ZCA) of real test images. `Recipe`
gathers all of it from the manifest, so a user's own training loop gets the same
training as ``habactl evaluate``.

Two kinds of recipe exist. The standard one (cross-entropy, SGD, step schedule, DSA) is
what every archive without the distillation fields records. The knowledge-distillation
one (``training.recommended.loss`` = "kd": KL divergence to the targets at a temperature,
AdamW, cosine schedule, random resized crop and flip) is the teacher-driven paradigm's;
its targets are the stored soft labels, or, when the archive records a teacher, that
teacher's outputs on each augmented batch (docs/objectives.md, "Training with soft
labels").

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

from habactl.evaluation.protocol import KD, STANDARD, lr_factor
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
# The random resized crop's aspect ratios (habactl.training.resized_crop.RATIO; a copy
# that keeps this module torch-free, checked by tests/test_recipe.py).
CROP_RATIO = (3 / 4, 4 / 3)
# The crop's smallest area fraction when an rrc_flip recipe records none, and the
# temperature when a kd recipe records none (format/SPEC.md).
DEFAULT_CROP_SCALE = 0.08
DEFAULT_TEMPERATURE = 1.0


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
class Crop:
    """The distillation recipe's augmentation: a random resized crop per image (area
    fraction uniform in [scale, 1], aspect ratio log-uniform in 3/4 to 4/3), resized back
    to the image size, mirrored with probability 1/2 when `flip` (never for digits)."""

    scale: float
    flip: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": [self.scale, 1.0],
            "ratio": list(CROP_RATIO),
            "flip": self.flip,
        }


@dataclass(frozen=True)
class TeacherRef:
    """The teacher file a recipe needs at training time (online distillation)."""

    name: str
    sha256: str
    bytes: int

    def text(self, *, short: bool = False) -> str:
        """Name, sha256 (its first 16 digits when `short`) and size."""
        digest = f"{self.sha256[:16]}…" if short else self.sha256
        return f"{self.name} (sha256 {digest}, {self.bytes:,} bytes)"


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
    optimizer_name: str = field(default="sgd")  # or "adamw" (momentum unused)
    schedule: str = "step"  # or "cosine": lr · ½(1 + cos(π · epoch / epochs))
    loss_kind: str = "ce"  # or "kd": KL divergence at `temperature`, times temperature²
    temperature: float = 1.0
    crop: Crop | None = None  # the kd recipe's augmentation (then dsa is None)
    teacher: TeacherRef | None = None  # kd targets from this teacher on each batch
    labels_temperature: float = 1.0  # the temperature a teacher wrote soft labels at
    # Per-crop labels (format 1.4): epochs of stored views whose crops and labels the kd
    # recipe trains on (HabaDataset.crop_views) in place of random crops; None: none.
    crop_epochs: int | None = None

    # -- building -----------------------------------------------------------------------
    @classmethod
    def from_manifest(cls, manifest: Manifest | Mapping[str, Any]) -> Recipe:
        """The recipe recorded in a (validated) manifest: an archive's ``info``, or the
        parsed JSON."""
        m = manifest if isinstance(manifest, Manifest) else Manifest.from_json(manifest)
        recommended = m.training.recommended
        learned = m.training.learned_lr
        provenance = m.provenance
        # The distillation fields (format/SPEC.md §3); absent: the standard recipe.
        extra = recommended.to_json()
        flip = _flip(provenance.hyperparameters, provenance.dataset)
        augmentation = recommended.augmentation.lower()
        dsa = crop = None
        if augmentation == "rrc_flip":
            crop = Crop(float(extra.get("crop_scale", DEFAULT_CROP_SCALE)), flip)
        elif augmentation != "none":
            dsa = DSA(DSA_STRATEGY, flip, dict(DSA_PARAMS))
        teacher = extra.get("teacher")
        # Soft labels a teacher wrote (format 1.3: provenance.teacher) at its temperature.
        wrote = m.json["provenance"].get("teacher") if m.label_kind == "soft" else None
        labels_temperature = float(wrote.get("temperature", 1.0)) if wrote else 1.0
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
            optimizer_name=str(extra.get("optimizer", "sgd")),
            schedule=str(extra.get("schedule", "step")),
            loss_kind=str(extra.get("loss", "ce")),
            temperature=float(extra.get("temperature", DEFAULT_TEMPERATURE)),
            crop=crop,
            teacher=None
            if teacher is None
            else TeacherRef(str(teacher["name"]), str(teacher["sha256"]), int(teacher["bytes"])),
            labels_temperature=labels_temperature,
            crop_epochs=m.crop_epochs,
        )

    def with_(self, **changes: Any) -> Recipe:
        """A copy with the given fields changed; None values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def kind(self) -> str:
        """The recipe kind: "kd" for knowledge distillation, else "standard"."""
        return "kd" if self.loss_kind == "kd" else "standard"

    @property
    def flip(self) -> bool:
        """Whether the augmentation may mirror images (False for digits)."""
        if self.crop is not None:
            return self.crop.flip
        return True if self.dsa is None else self.dsa.flip

    def as_kind(self, kind: str) -> Recipe:
        """This archive's recipe of the other kind, from that kind's preset: "kd" trains a
        standard archive with the distillation recipe (KD in habactl.evaluation.protocol),
        "standard" a distillation archive with the standard protocol. The same kind
        returns the recipe itself. Data set, labels, normalisation and flip are kept."""
        if kind == self.kind:
            return self
        if kind not in ("standard", "kd"):
            raise ValueError(f"unknown recipe kind {kind!r} (known: standard, kd)")
        preset = KD if kind == "kd" else STANDARD
        kd = kind == "kd"
        return dataclasses.replace(
            self,
            epochs=preset.epochs,
            batch_size=preset.batch_size,
            lr=preset.lr,
            lr_source="preset",
            momentum=preset.momentum,
            weight_decay=preset.weight_decay,
            lr_decay_at=preset.lr_decay_at,
            lr_decay=preset.lr_decay,
            dsa=None if kd else DSA(DSA_STRATEGY, self.flip, dict(DSA_PARAMS)),
            crop=Crop(preset.crop_scale, self.flip) if kd else None,
            optimizer_name=preset.optimizer,
            schedule=preset.schedule,
            loss_kind=preset.loss,
            temperature=preset.temperature,
            teacher=None,
        )

    # -- the schedule ---------------------------------------------------------------------
    @property
    def decay_epoch(self) -> int:
        """First 0-based epoch trained at the decayed lr (500 of 1,000)."""
        return int(self.epochs * self.lr_decay_at)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 0-based `epoch`."""
        return self.lr * self._factor()(epoch)

    def _factor(self) -> _Factor:
        return _Factor(self.schedule, self.epochs, self.decay_epoch, self.lr_decay)

    @property
    def loss_name(self) -> str:
        if self.kind == "kd":
            t = self.temperature
            source = (
                "the teacher's outputs on each augmented batch"
                if self.teacher is not None
                else "the stored class probabilities"
                if self.labels == "soft"
                else "the stored classes (one-hot)"
            )
            if self.teacher is None and self.labels_temperature != 1:
                source += f" (written at temperature {self.labels_temperature:g})"
            return f"KL divergence to {source} at temperature {t:g}, times {t * t:g}"
        return (
            "cross-entropy against the stored class probabilities"
            if self.labels == "soft"
            else "cross-entropy"
        )

    # -- views ----------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists, not tuples)."""
        schedule: dict[str, Any] = (
            {"kind": "cosine"}
            if self.schedule == "cosine"
            else {
                "kind": "step",
                "lr_decay_at": self.lr_decay_at,
                "lr_decay": self.lr_decay,
                "decay_epoch": self.decay_epoch,
            }
        )
        augmentation: dict[str, Any] | None = None
        if self.crop is not None:
            augmentation = {"kind": "rrc_flip", **self.crop.as_dict()}
        elif self.dsa is not None:
            augmentation = {"kind": "dsa", **self.dsa.as_dict()}
        data = {
            "arch": self.arch,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer_name,
            "lr": self.lr,
            "lr_source": self.lr_source,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "schedule": schedule,
            "augmentation": augmentation,
            "labels": self.labels,
            "loss": self.loss_name,
            "normalization": {k: v for k, v in self.normalization.items()},
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "dataset": self.dataset,
            "objective": self.objective,
        }
        if self.kind == "kd":  # a standard recipe's dict keeps the keys it always had
            data["kind"] = "kd"
            data["temperature"] = self.temperature
            data["teacher"] = None if self.teacher is None else dataclasses.asdict(self.teacher)
            data["crop_epochs"] = self.crop_epochs
        return data

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
        if self.crop is not None and self.crop_epochs is not None and self.kind == "kd":
            aug = textwrap.wrap(
                f"the stored crops: {self.crop_epochs} epochs of views, one per image, each "
                f"with its own label (training epoch e uses stored epoch e mod "
                f"{self.crop_epochs}; HabaDataset.crop_views)",
                86,
                initial_indent="augmentation  ",
                subsequent_indent=" " * 14,
            )
        elif self.crop is not None:
            aug = [
                f"augmentation  random resized crop per image (area {self.crop.scale:g} to 1, "
                f"aspect 3/4 to 4/3), {'with' if self.crop.flip else 'no'} flip"
            ]
        elif self.dsa is None:
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
        if self.optimizer_name == "adamw":
            optimizer = (
                f"optimizer     AdamW, lr {self.lr:g} ({self.lr_source}), "
                f"weight decay {self.weight_decay:g}"
            )
        else:
            optimizer = (
                f"optimizer     SGD, lr {self.lr:g} ({self.lr_source}), "
                f"momentum {self.momentum:g}, weight decay {self.weight_decay:g}"
            )
        if self.schedule == "cosine":
            schedule = f"schedule      cosine, lr {self.lr:g} to 0 over the epochs (set per epoch)"
        else:
            schedule = (
                f"schedule      lr x {self.lr_decay:g} from epoch {self.decay_epoch} "
                f"({self.lr_decay_at:g} of the epochs)"
            )
        labels = [f"labels        {self.labels}; loss: {self.loss_name}"]
        if self.kind == "kd":
            labels = [
                f"labels        {self.labels}",
                *textwrap.wrap(
                    f"loss: knowledge distillation, {self.loss_name}",
                    86,
                    initial_indent="recipe        ",
                    subsequent_indent=" " * 14,
                ),
            ]
        if self.teacher is not None:
            labels += textwrap.wrap(
                f"needed to train: {self.teacher.text(short=True)}",
                86,
                initial_indent="teacher       ",
                subsequent_indent=" " * 14,
            )
        return [
            f"network       {self.arch} (the archive was distilled with it; any network works)",
            f"epochs        {self.epochs}, batch {self.batch_size}",
            optimizer,
            schedule,
            *aug,
            *labels,
            f"test images   {norm_text}",
        ]

    def protocol(self, **changes: Any) -> Protocol:
        """The same training as an evaluation `Protocol` (for ``evaluate_archive``)."""
        from habactl.evaluation.protocol import Protocol

        augmentation = "none" if self.dsa is None else "dsa"
        if self.crop is not None:
            augmentation = "rrc_flip"
        base = Protocol(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            lr_decay_at=self.lr_decay_at,
            lr_decay=self.lr_decay,
            augmentation=augmentation,
            optimizer=self.optimizer_name,
            schedule=self.schedule,
            loss=self.loss_kind,
            temperature=self.temperature,
            crop_scale=DEFAULT_CROP_SCALE if self.crop is None else self.crop.scale,
        )
        return base.with_(**changes)

    def evaluation_protocol(self, kind: str | None = None, *, fast: bool = False) -> Protocol:
        """The protocol ``habactl evaluate`` trains this archive with.

        `kind` None is the archive's own recipe. "standard" is the standard protocol
        (STANDARD, or FAST with `fast`), as evaluate has always trained: the archive's lr
        is applied by the evaluation (archive_lr). "kd" is the distillation recipe the
        archive records, or the KD preset for an archive that records none; `fast` keeps
        KD_FAST's epochs and models."""
        from habactl.evaluation.protocol import KD_FAST, base_protocol

        kind = kind or self.kind
        if kind != "kd" or self.kind != "kd":
            return base_protocol(kind, fast=fast)
        recorded = self.protocol()
        return recorded.with_(epochs=KD_FAST.epochs, models=KD_FAST.models) if fast else recorded

    # -- torch objects (torch is imported here, not at module import) ---------------------
    def augmentation(self, seed: int = 0) -> BatchAugment:
        """The recorded DSA as a batch transform, reproducible from `seed`.

        Call it on a batch of images (N, C, H, W) on any device, or pass its ``collate``
        as a DataLoader's ``collate_fn`` to augment in the workers. With no augmentation
        recorded it returns the batch unchanged.
        """
        from habactl.training.augment import BatchAugment, SiameseAugment

        if self.crop is not None:
            from habactl.training.resized_crop import ResizedCropFlip

            return BatchAugment(ResizedCropFlip(self.crop.scale, flip=self.crop.flip), seed=seed)
        if self.dsa is None:
            return BatchAugment(SiameseAugment("none"), seed=seed)
        augmenter = SiameseAugment(self.dsa.strategy, flip=self.dsa.flip, **dict(self.dsa.params))
        return BatchAugment(augmenter, seed=seed, per_sample=self.dsa.per_sample)

    def loss(self) -> torch.nn.Module:
        """The loss for the archive's labels, averaged over the batch; ``loss(logits,
        labels)`` with the labels the loader gives.

        Standard recipe: cross-entropy against class indices (hard) or against the stored
        class probabilities (soft). ``torch.nn.CrossEntropyLoss`` takes either target: (N,)
        integer classes or (N, classes) probabilities, where it computes ``-(p *
        log_softmax(logits)).sum(1).mean()``, which is what ``habactl evaluate`` trains with.

        Distillation recipe: ``habactl.training.kd.KDLoss`` at the recipe's temperature;
        it softens stored probabilities (or one-hot classes) to that temperature. With a
        teacher, call ``loss.tempered(logits, teacher.probabilities(images,
        temperature=recipe.temperature))`` on each augmented batch instead.
        """
        if self.kind == "kd":
            from habactl.training.kd import KDLoss

            return KDLoss(self.temperature, self.labels_temperature)
        import torch

        return torch.nn.CrossEntropyLoss()

    def optimizer(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        """SGD with the recipe's lr, momentum and weight decay, or AdamW with its lr and
        weight decay (torch's betas and eps)."""
        import torch

        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The step or cosine schedule; call ``.step()`` once at the end of every epoch."""
        import torch

        return torch.optim.lr_scheduler.LambdaLR(optimizer, self._factor())


class _Factor:
    """lr factor of an epoch (picklable): step, 1 before `decay_epoch` and `decay` from it
    on; or cosine over `epochs` (habactl.evaluation.protocol.lr_factor)."""

    def __init__(self, schedule: str, epochs: int, decay_epoch: int, decay: float) -> None:
        self.schedule = schedule
        self.epochs = epochs
        self.decay_epoch = decay_epoch
        self.decay = decay

    def __call__(self, epoch: int) -> float:
        return lr_factor(self.schedule, epoch, self.epochs, self.decay_epoch, self.decay)


def _flip(hyperparameters: Mapping[str, Any], dataset: str) -> bool:
    """Whether mirroring is allowed: as recorded by the distillation, else by data set."""
    recorded = hyperparameters.get("augmentation")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("flip"), bool):
        return bool(recorded["flip"])
    return dataset.lower() not in DIGIT_DATASETS


def _numbers(values: Iterable[float]) -> str:
    return ", ".join(f"{float(v):g}" for v in values) or "-"


__all__ = [
    "CROP_RATIO",
    "DIGIT_DATASETS",
    "DSA",
    "DSA_PARAMS",
    "DSA_STRATEGY",
    "LR_DECAY",
    "Crop",
    "Recipe",
    "TeacherRef",
]
