"""An experts buffer's ``index.json`` as typed, frozen values: what code outside the
buffer's own reading and writing (MTT's objective, the CLI) reads.

``ExpertsIndex.from_json`` builds it from the parsed file once (``read_index`` does, for
``ExpertBuffer.index``; ``train_experts`` returns one); the JSON stays available as
``json``. Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainedOn:
    """The data set the experts were trained on."""

    name: str
    fingerprint: str
    classes: tuple[str, ...]
    image: tuple[int, int, int]  # (channels, height, width)


@dataclass(frozen=True)
class ExpertArch:
    """The experts' (and the student's) network: a registry name and its width."""

    name: str  # as built: "convnet-d4" for "convnet" at 64 px
    width: float
    norm: str  # the experts' normalisation layers ("instance")

    def to_json(self) -> dict[str, Any]:
        """The index's entry, as an archive's provenance records it."""
        return asdict(self)


@dataclass(frozen=True)
class ExpertParameters:
    """How many parameters a trajectory row holds, and their layout (name, shape) pairs."""

    count: int
    layout: Any  # the JSON list, compared with FlatNet.describe()


@dataclass(frozen=True)
class ExpertTraining:
    """How each expert was trained (the SGD the trajectories follow)."""

    epochs: int
    lr: float
    batch_size: int
    seed: int


@dataclass(frozen=True)
class ExpertEntry:
    """One finished expert: its trajectory file, that file's sha256, and how training
    went (its final training accuracy, a fraction, and seconds)."""

    file: str
    expert: int
    sha256: str
    train_accuracy: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The index's entry."""
        return asdict(self)


@dataclass(frozen=True)
class ExpertsIndex:
    """A buffer's index: its settings and the experts finished so far."""

    library: str
    dataset: TrainedOn
    arch: ExpertArch
    parameters: ExpertParameters
    training: ExpertTraining
    experts: tuple[ExpertEntry, ...]
    json: Mapping[str, Any] = field(compare=False, repr=False)

    @classmethod
    def from_json(cls, m: Mapping[str, Any]) -> ExpertsIndex:
        """The typed view of a parsed index; KeyError, TypeError or ValueError when a
        field it reads is missing or of the wrong kind (``read_index`` says which file)."""
        data, image = m["dataset"], m["dataset"]["image"]
        arch, parameters, training = m["arch"], m["parameters"], m["training"]
        return cls(
            library=str(m.get("library", "")),
            dataset=TrainedOn(
                name=str(data["name"]),
                fingerprint=str(data["fingerprint"]),
                classes=tuple(str(c) for c in data["classes"]),
                image=(int(image["channels"]), int(image["height"]), int(image["width"])),
            ),
            arch=ExpertArch(str(arch["name"]), float(arch["width"]), str(arch["norm"])),
            parameters=ExpertParameters(int(parameters["count"]), parameters["layout"]),
            training=ExpertTraining(
                epochs=int(training["epochs"]),
                lr=float(training["lr"]),
                batch_size=int(training["batch_size"]),
                seed=int(training["seed"]),
            ),
            experts=tuple(_entry(e) for e in m["experts"]),
            json=m,
        )


def _entry(e: Mapping[str, Any]) -> ExpertEntry:
    return ExpertEntry(
        file=str(e["file"]),
        expert=int(e["expert"]),
        sha256=str(e["sha256"]),
        train_accuracy=float(e["train_accuracy"]),
        seconds=float(e["seconds"]),
    )


__all__ = [
    "ExpertArch",
    "ExpertEntry",
    "ExpertParameters",
    "ExpertTraining",
    "ExpertsIndex",
    "TrainedOn",
]
