"""The manifest as typed, frozen values: what code outside ``habactl.format`` reads.

``Manifest.from_json`` builds it once from a validated manifest (the reader does, for
``Archive.info``); the parsed JSON stays available as ``Manifest.json`` for the places
that show or copy it whole (``inspect --json``, ``x-`` fields). Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from habactl.format.labels import crop_epochs


@dataclass(frozen=True)
class Image:
    """The shape of one decoded training image."""

    channels: int
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class Bases:
    """The stored bases: how many, per class (class-sorted), and one basis' shape."""

    count: int
    per_class: tuple[int, ...]
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class Normalization:
    """How the bases' space relates to pixels: kind ``none``, ``mean-std`` or ``zca``."""

    kind: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    eps: float | None = None
    json: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The manifest entry, as ``habactl.format.normalization.Normalizer`` takes it."""
        return dict(self.json)


@dataclass(frozen=True)
class Recommended:
    """The training the archive recommends (the evaluation protocol's settings)."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    augmentation: str
    lr_decay_at: float | None  # fraction of the epochs before the lr drops; None: not recorded
    json: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return dict(self.json)


@dataclass(frozen=True)
class Training:
    """The recommended training and, when the objective learned one, its lr."""

    learned_lr: float | None
    recommended: Recommended


@dataclass(frozen=True)
class Provenance:
    """Where the archive comes from: data set, objective, settings, library, time."""

    dataset: str
    fingerprint: str
    objective: str
    hyperparameters: Mapping[str, Any]
    iterations: int
    seed: int
    library: str
    created: str
    # Format 1.3: the teacher whose probabilities the soft labels are (name, sha256,
    # arch, temperature); None when the archive records none.
    teacher: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Storage:
    """The budget the archive claims: ``ipc`` images per class, counting ``counts``."""

    ipc: int
    counts: str
    budget_values: int


@dataclass(frozen=True)
class Manifest:
    """A validated manifest (format/SPEC.md §3) as attributes."""

    format_version: str
    classes: tuple[str, ...]
    image: Image
    bases: Bases
    label_kind: str
    pipeline: tuple[Mapping[str, Any], ...]  # {"name", "version", "configuration"} entries
    normalization: Normalization
    training: Training
    provenance: Provenance
    storage: Storage
    content_digest: str | None
    manifest_digest: str | None
    json: Mapping[str, Any] = field(compare=False, repr=False)
    # How soft labels are stored (format 1.3): "float32" (every earlier archive),
    # "float16", "uint8" or "top-k" with label_k values per row; "hard" for hard labels.
    label_form: str = "hard"
    label_k: int | None = None
    # Per-crop labels (format 1.4): the epochs of stored views, None without them.
    crop_epochs: int | None = None

    @classmethod
    def from_json(cls, m: Mapping[str, Any]) -> Manifest:
        """The typed view of a manifest that ``validate_manifest`` accepted."""
        image, bases, training = m["image"], m["bases"], m["training"]
        return cls(
            format_version=str(m["format_version"]),
            classes=tuple(m["classes"]),
            image=Image(int(image["channels"]), int(image["height"]), int(image["width"])),
            bases=Bases(
                int(bases["count"]),
                tuple(int(n) for n in bases["per_class"]),
                (int(bases["shape"][0]), int(bases["shape"][1]), int(bases["shape"][2])),
            ),
            label_kind=str(m["labels"]["kind"]),
            pipeline=tuple(m["pipeline"]),
            normalization=_normalization(m["normalization"]),
            training=Training(training.get("learned_lr"), _recommended(training["recommended"])),
            provenance=_provenance(m["provenance"]),
            storage=Storage(
                int(m["storage"]["ipc"]),
                str(m["storage"]["counts"]),
                int(m["storage"]["budget_values"]),
            ),
            content_digest=m.get("content_digest"),
            manifest_digest=m.get("manifest_digest"),
            json=m,
            label_form=(
                str(m["labels"].get("form", "float32")) if m["labels"]["kind"] == "soft" else "hard"
            ),
            label_k=m["labels"].get("k"),
            crop_epochs=crop_epochs(m["labels"]),
        )

    @property
    def soft_labels(self) -> bool:
        return self.label_kind == "soft"

    def pipeline_entries(self) -> list[dict[str, Any]]:
        """The pipeline as ``Pipeline.from_manifest`` and ``describe_pipeline`` take it."""
        return [dict(entry) for entry in self.pipeline]


def _normalization(n: Mapping[str, Any]) -> Normalization:
    return Normalization(
        kind=str(n["kind"]),
        mean=tuple(float(x) for x in n.get("mean", ())),
        std=tuple(float(x) for x in n.get("std", ())),
        eps=None if n.get("eps") is None else float(n["eps"]),
        json=n,
    )


def _recommended(r: Mapping[str, Any]) -> Recommended:
    return Recommended(
        arch=str(r["arch"]),
        epochs=int(r["epochs"]),
        batch_size=int(r["batch_size"]),
        lr=float(r["lr"]),
        momentum=float(r["momentum"]),
        weight_decay=float(r["weight_decay"]),
        augmentation=str(r["augmentation"]),
        lr_decay_at=None if r.get("lr_decay_at") is None else float(r["lr_decay_at"]),
        json=r,
    )


def _provenance(p: Mapping[str, Any]) -> Provenance:
    return Provenance(
        dataset=str(p["dataset"]["name"]),
        fingerprint=str(p["dataset"]["fingerprint"]),
        objective=str(p["objective"]),
        hyperparameters=p.get("hyperparameters") or {},
        iterations=int(p["iterations"]),
        seed=int(p["seed"]),
        library=str(p["library"]),
        created=str(p["created"]),
        teacher=p.get("teacher"),
    )
