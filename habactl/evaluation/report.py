"""What an evaluation found, as frozen values; turned into JSON only at the edges
(``evaluate --json``, bench files) by ``EvaluationReport.to_json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from habactl.evaluation.protocol import Protocol

SCORE = "final-epoch test accuracy, mean and population std over models"


@dataclass(frozen=True)
class ArchScore:
    """One architecture's networks: accuracies in percent, their mean and std, seconds."""

    accuracies: tuple[float, ...]
    mean: float
    std: float
    models: int
    seconds: float
    seconds_per_model: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "accuracies": list(self.accuracies)}


def scores_json(scores: dict[str, ArchScore]) -> dict[str, dict[str, Any]]:
    return {arch: score.to_json() for arch, score in scores.items()}


class _Plain:
    """A report part whose JSON is its fields as they are."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class ArchiveFacts(_Plain):
    """The archive evaluated: what it stores against its budget."""

    path: str
    content_digest: str | None
    objective: str
    bases: int
    expansion: int
    training_images: int
    labels: str
    normalization: str
    ipc: int
    stored_values: int
    budget_values: int


@dataclass(frozen=True)
class DataFacts(_Plain):
    """The real data set tested on, and whether it is the archive's own."""

    name: str
    fingerprint: str
    matches_archive: bool
    train_images: int
    test_images: int


@dataclass(frozen=True)
class RunSettings:
    """The protocol as run: its settings, the archive's lr and where it came from, and
    where the networks trained."""

    protocol: Protocol
    lr: float
    lr_source: str
    device: str
    threads: int
    jobs: int
    world_size: int  # torchrun's processes; 1 without torchrun (then not in the JSON)
    flip: bool
    teacher: dict[str, Any] | None = None  # the teacher of online distillation (path, ...)
    crop_epochs: int | None = None  # the archive trained on its stored crops (format 1.4)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.protocol.to_dict(),
            "lr": self.lr,
            "lr_source": self.lr_source,
            "device": self.device,
            "threads": self.threads,
            "jobs": self.jobs,
            **({"world_size": self.world_size} if self.world_size > 1 else {}),
            "flip": self.flip,
            **({"teacher": self.teacher} if self.teacher is not None else {}),
            **({"crop_epochs": self.crop_epochs} if self.crop_epochs is not None else {}),
            "score": SCORE,
        }


@dataclass(frozen=True)
class BaselineReport:
    """One baseline arm (full data, random real images) and its scores."""

    training_images: int
    epochs: int
    lr: float
    results: dict[str, ArchScore]
    note: str | None = None
    per_class: int | None = None  # the random baseline's images per class

    def to_json(self) -> dict[str, Any]:
        extra = {"note": self.note, "per_class": self.per_class}
        return {
            "training_images": self.training_images,
            "epochs": self.epochs,
            "lr": self.lr,
            **{key: value for key, value in extra.items() if value is not None},
            "results": scores_json(self.results),
        }


@dataclass(frozen=True)
class EvaluationReport:
    """Everything ``evaluate_archive`` found; ``to_json`` is ``evaluate --json``'s output."""

    archive: ArchiveFacts
    data: DataFacts
    run: RunSettings
    results: dict[str, ArchScore]
    baselines: dict[str, BaselineReport] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "archive": self.archive.to_json(),
            "data": self.data.to_json(),
            "protocol": self.run.to_json(),
            "accuracy_unit": "percent",
            "results": scores_json(self.results),
            "baselines": {name: arm.to_json() for name, arm in self.baselines.items()},
            "warnings": list(self.warnings),
            "seconds": self.seconds,
        }
