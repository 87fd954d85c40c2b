"""Evaluate an archive (and, on request, the full-data and random baselines).

For each architecture, `protocol.models` networks are trained from scratch (model i
seeded with seed + i, for its initialisation, shuffling and augmentation) and scored on
the real test split by their final-epoch accuracy. The result is an
``EvaluationReport`` (habactl/evaluation/report.py).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from habactl.data.stored import is_stored, is_stored_images
from habactl.errors import HabaError
from habactl.evaluation.parallel import ModelScore, ModelTask, Progress, default_jobs, run_tasks
from habactl.evaluation.protocol import DEFAULT_LR, FULL_DATA_EPOCH_DIVISOR, Protocol
from habactl.evaluation.report import (
    ArchiveFacts,
    ArchScore,
    BaselineReport,
    DataFacts,
    EvaluationReport,
    RunSettings,
)
from habactl.evaluation.score import summarize
from habactl.format.view import Manifest
from habactl.runtime.device import DEVICES, resolve_device
from habactl.runtime.distributed import SINGLE, Collective

BASELINES = ("full", "random")

Warn = Callable[[str], None]


@dataclass
class TrainingSet:
    """One arm of the comparison: images already in the network's input space."""

    name: str
    images: Tensor
    labels: Tensor
    protocol: Protocol
    lr: float
    lr_source: str
    note: str | None = None  # how a baseline arm was drawn, shown under the table
    per_class: int | None = None  # the random arm's real images per class
    views: Any | None = None  # the archive's per-crop views and labels (kd recipe only)

    @property
    def training_images(self) -> int:
        return int(self.images.shape[0])


def parse_names(values: Iterable[str] | None, known: Sequence[str], what: str) -> list[str]:
    """Names given repeated and/or comma-separated, checked and deduplicated in order."""
    names: list[str] = []
    for value in values or ():
        for name in value.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in known:
                raise HabaError(f"unknown {what} {name!r} (known: {', '.join(known)})")
            if name not in names:
                names.append(name)
    return names


def archive_lr(
    dataset: Any, lr: float | None, protocol: Protocol | None = None
) -> tuple[float, str]:
    """The lr the archive is trained with: --lr, else the learned lr, else the recommended.

    When `protocol` is of the other kind than the archive's recipe (``evaluate --recipe``
    forcing the standard or the distillation recipe), the archive's lr belongs to another
    optimiser: the protocol's lr is used."""
    if lr is not None:
        return float(lr), "option"
    if protocol is not None and protocol.kind != dataset.recipe.kind:
        return float(protocol.lr), "protocol"
    if dataset.info.training.learned_lr is not None:
        return float(dataset.recommended_lr), "learned"
    return float(dataset.recommended_lr), "archive"


def baseline_lr(protocol: Protocol, lr: float | None) -> tuple[float, str]:
    """The lr of the baseline arms: --lr, else the standard protocol's, or the kd one's."""
    if lr is not None:
        return float(lr), "option"
    return (DEFAULT_LR if protocol.kind == "standard" else float(protocol.lr)), "protocol"


def load_evaluation_teacher(
    dataset: Any,
    source: Any,
    protocol: Protocol,
    teacher: str | os.PathLike[str] | None,
    warn: Warn | None = None,
) -> dict[str, Any] | None:
    """Check the teacher an evaluation trains with (online distillation); what the report
    records of it (None without one).

    An archive whose recipe records a teacher cannot be trained with the distillation
    recipe without it: the error names the recorded file (name, sha256, size)."""
    recorded = dataset.recipe.teacher
    if teacher is None:
        if protocol.kind == "kd" and recorded is not None:
            raise HabaError(
                f"{dataset.path}: the archive's recipe trains on its teacher's outputs "
                f"(online distillation); give the teacher with --teacher: it records "
                f"{recorded.text()}"
            )
        return None
    if protocol.kind != "kd":
        raise HabaError("--teacher gives the targets of the kd recipe: add --recipe kd")
    from habactl.teacher.file import check_teacher_for, load_teacher

    loaded = load_teacher(Path(teacher))
    note = check_teacher_for(loaded, source)
    if note is not None and warn is not None:
        warn(note)
    check_teacher_space(dataset, loaded)
    if recorded is not None and loaded.sha256 != recorded.sha256 and warn is not None:
        warn(
            f"teacher {Path(teacher).name} is not the one the archive records "
            f"({recorded.text(short=True)})"
        )
    return {"path": str(Path(teacher).resolve()), **loaded.describe()}


def check_teacher_space(dataset: Any, teacher: Any) -> None:
    """The archive's images go into the teacher as they are: both must live in the same
    normalised space (habactl's mean-std of the data set)."""
    archive = dataset.info.normalization
    theirs = teacher.normalization
    same = archive.kind == theirs.get("kind") and all(
        len(ours) == len(theirs.get(key, ()))
        and all(math.isclose(a, float(b), rel_tol=1e-6) for a, b in zip(ours, theirs[key]))
        for key, ours in (("mean", archive.mean), ("std", archive.std))
    )
    if not same:
        raise HabaError(
            f"the teacher takes images normalised as {_norm_text(theirs)} but the "
            f"archive's are {_norm_text(archive.to_json())}: its images cannot go into it"
        )


def _norm_text(normalization: Any) -> str:
    kind = normalization.get("kind", "none")
    if kind == "none":
        return "none"
    mean = ", ".join(f"{float(v):g}" for v in normalization.get("mean", ()))
    std = ", ".join(f"{float(v):g}" for v in normalization.get("std", ()))
    return f"{kind} (mean {mean}; std {std})"


def load_test_source(
    dataset: Any,
    data: str | None = None,
    root: str | os.PathLike[str] | None = None,
    warn: Warn | None = None,
) -> Any:
    """The real data set to test on: `data`, else the one named in the archive's provenance.

    A store is read lazily; its fingerprint is the one recorded when it was prepared
    (nothing is rehashed)."""
    from habactl.data.opening import open_data

    recorded = dataset.info.provenance
    name = data or recorded.dataset
    try:
        source = open_data(name, root=str(root) if root is not None else None)
    except HabaError as error:
        if data is None:
            raise HabaError(
                f"cannot load the archive's data set {name!r} ({error}); "
                "point to it with --data/--root"
            ) from None
        raise
    check_compatible(dataset, source)
    if source.fingerprint != recorded.fingerprint and warn is not None:
        warn(
            f"data set {name!r} is not the one the archive was made from "
            f"(fingerprint {source.fingerprint[:19]}… vs {recorded.fingerprint[:19]}…): "
            "its test split may overlap the archive's training images"
        )
    return source


def check_compatible(dataset: Any, source: Any) -> None:
    if tuple(dataset.image_shape) != tuple(source.image_shape):
        raise HabaError(
            f"the archive's images are {_shape(dataset.image_shape)} but data set "
            f"{source.name!r} has {_shape(source.image_shape)}"
        )
    if len(dataset.classes) != source.num_classes:
        raise HabaError(
            f"the archive has {len(dataset.classes)} classes but data set "
            f"{source.name!r} has {source.num_classes}"
        )
    if is_stored(source) and list(source.classes) != list(dataset.classes):
        k = next(i for i, (a, b) in enumerate(zip(source.classes, dataset.classes)) if a != b)
        raise HabaError(
            f"store {str(source.path)!r} has other classes than the archive (class {k} is "
            f"{source.classes[k]!r} there, {dataset.classes[k]!r} in the archive)"
        )


def prepare_test_images(dataset: Any, source: Any) -> tuple[Tensor, Tensor]:
    """The real test split in the archive's normalised space (mean/std or ZCA).

    Always goes through the archive's own transform; an archive whose transform cannot
    be built (a ZCA archive without its matrix) raises instead of testing raw pixels.
    """
    check_compatible(dataset, source)
    normalize = dataset.test_transform()
    return transformed(source.test.images, normalize), source.test.labels


def transformed(images: Any, transform: Any) -> Any:
    """``transform(images)``; for a store's images (read when indexed) the transform is
    applied to each batch read."""
    if is_stored_images(images):
        return images.transformed(transform)
    return transform(images)


def budget_per_class(manifest: Manifest) -> int:
    """Real images per class that fit in the archive's true storage: stored values ÷
    values per image ÷ classes, rounded down, at least 1."""
    from habactl.format import storage_account

    account = storage_account(manifest.json)  # the format's own reading of its JSON
    per_image = math.prod(manifest.image.shape)
    return max(1, account.stored_values // per_image // len(manifest.classes))


def archive_training_set(
    dataset: Any, protocol: Protocol, lr: float | None = None, *, online_teacher: bool = False
) -> TrainingSet:
    images, labels = dataset.tensors()
    labels_temperature = dataset.recipe.labels_temperature
    if protocol.kind == "kd" and labels.dim() == 2 and labels_temperature != 1:
        from habactl.training.kd import soften

        # Soft labels a teacher wrote at T_l, brought back to temperature 1: the kd loss
        # softens them to its own T (habactl.training.kd).
        labels = soften(labels.double(), 1 / labels_temperature).to(labels.dtype)
    # Per-crop labels train the kd recipe, unless a teacher online gives every crop its target.
    views = dataset.crop_views() if protocol.kind == "kd" and not online_teacher else None
    if views is not None and labels_temperature != 1:
        from habactl.training.kd import soften

        views = views.with_labels(
            soften(views.labels.double().flatten(0, 1), 1 / labels_temperature).float()
        )
    used_lr, source = archive_lr(dataset, lr, protocol)
    return TrainingSet("archive", images.float(), labels, protocol, used_lr, source, views=views)


def full_training_set(
    dataset: Any,
    source: Any,
    protocol: Protocol,
    *,
    lr: float | None = None,
    epochs: int | None = None,
) -> TrainingSet:
    normalize = dataset.test_transform()
    images = transformed(source.train.images, normalize)
    full = protocol.full_data(epochs)
    note = (
        f"whole real training set, {full.epochs} epochs "
        f"(epochs // {FULL_DATA_EPOCH_DIVISOR} of the archive's {protocol.epochs})"
        if epochs is None
        else f"whole real training set, {full.epochs} epochs"
    )
    return TrainingSet("full", images, source.train.labels, full, *baseline_lr(protocol, lr), note)


def random_training_set(
    dataset: Any, source: Any, protocol: Protocol, *, lr: float | None = None
) -> TrainingSet:
    from habactl.distill.baselines import random_per_class

    per_class = budget_per_class(dataset.info)
    indices = random_per_class(source.train.labels, per_class, source.num_classes, protocol.seed)
    images = dataset.test_transform()(source.train.images[indices])
    return TrainingSet(
        "random",
        images,
        source.train.labels[indices],
        protocol,
        *baseline_lr(protocol, lr),
        note=f"{per_class} random real image(s) per class (seed "
        f"{protocol.seed}): the archive's true storage budget",
        per_class=per_class,
    )


def model_tasks(
    training: TrainingSet,
    test_images: Tensor,
    test_labels: Tensor,
    archs: Sequence[str],
    *,
    num_classes: int,
    flip: bool,
    device: torch.device,
    teacher: str | None = None,
) -> list[ModelTask]:
    """The networks to train for one arm: `protocol.models` per architecture."""
    protocol = training.protocol
    return [
        ModelTask(
            training.name,
            arch,
            model,
            protocol.models,
            training.images,
            training.labels,
            protocol,
            training.lr,
            test_images,
            test_labels,
            num_classes,
            flip,
            str(device),
            teacher,
            training.views,
        )
        for arch in archs
        for model in range(protocol.models)
    ]


def summarize_arm(tasks: Sequence[ModelTask], scores: Sequence[ModelScore]) -> dict[str, ArchScore]:
    """Per architecture: accuracies in percent, mean, std, and training seconds."""
    results: dict[str, ArchScore] = {}
    for arch in dict.fromkeys(task.arch for task in tasks):
        mine = [score for task, score in zip(tasks, scores) if task.arch == arch]
        accuracies = [score.accuracy for score in mine]
        seconds = sum(score.seconds for score in mine)
        mean, std = summarize(accuracies)
        results[arch] = ArchScore(
            accuracies=tuple(round(a, 4) for a in accuracies),
            mean=round(mean, 4),
            std=round(std, 4),
            models=len(mine),
            seconds=round(seconds, 2),
            seconds_per_model=round(seconds / len(mine), 2),
        )
    return results


def evaluate_training_set(
    training: TrainingSet,
    test_images: Tensor,
    test_labels: Tensor,
    archs: Sequence[str],
    *,
    num_classes: int,
    flip: bool,
    device: torch.device,
    jobs: int = 1,
    progress: Progress | None = None,
) -> dict[str, ArchScore]:
    """Train `protocol.models` nets per architecture on `training`; accuracies in percent."""
    tasks = model_tasks(
        training, test_images, test_labels, archs, num_classes=num_classes, flip=flip, device=device
    )
    return summarize_arm(
        tasks, run_tasks(tasks, jobs=jobs, threads=torch.get_num_threads(), progress=progress)
    )


def evaluate_archive(
    path: str | os.PathLike[str],
    *,
    protocol: Protocol,
    archs: Sequence[str] = ("convnet",),
    data: str | None = None,
    root: str | os.PathLike[str] | None = None,
    lr: float | None = None,
    baselines: Sequence[str] = (),
    full_epochs: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    jobs: int | None = 1,
    progress: Progress | None = None,
    warn: Warn | None = None,
    collective: Collective = SINGLE,
    teacher: str | os.PathLike[str] | None = None,
) -> EvaluationReport:
    """Evaluate the archive at `path`; see the module docstring. ``.to_json()`` of the
    report is ``evaluate --json``'s output.

    `protocol` is trained as given: the standard recipe, or the distillation recipe
    (``protocol.loss == "kd"``; ``Recipe.evaluation_protocol`` gives the one an archive
    records). `teacher` (a teacher file, kd only) makes the targets the teacher's outputs
    on each augmented batch, for every arm; an archive whose recipe records a teacher
    needs it for a kd protocol.

    `threads` sets torch's CPU threads for the duration of the call (restored after), in
    this process and in each worker; `jobs` > 1 trains that many networks at a time in
    worker processes (None: one per CPU core, one on a GPU). The numbers do not depend
    on `jobs`, nor on the ranks of `collective` that share the networks (torchrun's
    job, each rank on its own GPU; ``SINGLE``: this process alone). A missing or damaged
    archive is the reader's error (``habactl evaluate`` checks the path before torch
    loads).
    """
    if threads is not None and threads < 1:
        raise HabaError(f"threads must be a positive integer, got {threads!r}")
    if jobs is not None and jobs < 1:
        raise HabaError(f"jobs must be a positive integer, got {jobs!r}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _evaluate_archive(
            path,
            protocol=protocol,
            archs=archs,
            data=data,
            root=root,
            lr=lr,
            baselines=baselines,
            full_epochs=full_epochs,
            device=device,
            jobs=jobs,
            progress=progress,
            warn=warn,
            collective=collective,
            teacher=teacher,
        )
    finally:
        torch.set_num_threads(previous)


def _evaluate_archive(
    path: str | os.PathLike[str],
    *,
    protocol: Protocol,
    archs: Sequence[str],
    data: str | None,
    root: str | os.PathLike[str] | None,
    lr: float | None,
    baselines: Sequence[str],
    full_epochs: int | None,
    device: str,
    jobs: int | None,
    progress: Progress | None,
    warn: Warn | None,
    collective: Collective,
    teacher: str | os.PathLike[str] | None,
) -> EvaluationReport:
    from habactl.nets.registry import arch_name
    from habactl.training.dataset import HabaDataset

    started = time.perf_counter()
    archs, baselines = _checked_request(lr, archs, baselines)
    target = collective.device_for(device)  # resolve_device's, or this rank's own GPU
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    path = Path(path)
    dataset = HabaDataset(path)
    # Results name the network trained: "convnet" at 64 px is reported as "convnet-d4".
    archs = list(dict.fromkeys(arch_name(a, *dataset.image_shape[1:]) for a in archs))
    if teacher is None:  # the missing teacher is named before any data is read
        load_evaluation_teacher(dataset, None, protocol, None)
    source = load_test_source(dataset, data, root, note)
    teacher_facts = load_evaluation_teacher(dataset, source, protocol, teacher, note)
    if protocol.kind == "kd" and teacher_facts is None and not dataset.soft_labels:
        note(
            "the kd recipe on hard labels trains against one-hot targets (cross-entropy "
            "at the temperature); give a teacher with --teacher for soft targets"
        )
    test_images, test_labels = prepare_test_images(dataset, source)
    arms = _arms(dataset, source, protocol, lr, baselines, full_epochs, teacher_facts is not None)
    tasks = {
        arm.name: model_tasks(
            arm,
            test_images,
            test_labels,
            archs,
            num_classes=source.num_classes,
            flip=not source.is_digits,
            device=target,
            teacher=None if teacher_facts is None else teacher_facts["path"],
        )
        for arm in arms
    }
    workers = _workers(jobs, target, sum(len(t) for t in tasks.values()), collective)
    scores = _train_together(tasks, workers, progress, collective)
    archive_arm = arms[0]
    return EvaluationReport(
        archive=_archive_facts(dataset, path, archive_arm),
        data=_data_facts(dataset, source, int(test_images.shape[0])),
        run=RunSettings(
            protocol=protocol,
            lr=archive_arm.lr,
            lr_source=archive_arm.lr_source,
            device=str(target),
            threads=torch.get_num_threads(),
            jobs=workers,
            world_size=collective.world_size,
            flip=not source.is_digits,
            teacher=teacher_facts,
            crop_epochs=None if archive_arm.views is None else archive_arm.views.epochs,
        ),
        results=scores[archive_arm.name],
        baselines={arm.name: _baseline_report(arm, scores[arm.name]) for arm in arms[1:]},
        warnings=tuple(warnings),
        seconds=round(time.perf_counter() - started, 2),
    )


def _checked_request(
    lr: float | None, archs: Sequence[str], baselines: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The architectures and baselines asked for, checked (before any data is read)."""
    from habactl.nets import ARCHITECTURES

    if lr is not None and not lr > 0:
        raise HabaError(f"lr must be positive, got {lr!r}")
    return (
        parse_names(archs, ARCHITECTURES, "architecture") or ["convnet"],
        parse_names(baselines, BASELINES, "baseline"),
    )


def _arms(
    dataset: Any,
    source: Any,
    protocol: Protocol,
    lr: float | None,
    baselines: Sequence[str],
    full_epochs: int | None,
    online_teacher: bool,
) -> list[TrainingSet]:
    """The archive's training set first, then each baseline asked for."""
    arms = [archive_training_set(dataset, protocol, lr, online_teacher=online_teacher)]
    if "full" in baselines:
        arms.append(full_training_set(dataset, source, protocol, lr=lr, epochs=full_epochs))
    if "random" in baselines:
        arms.append(random_training_set(dataset, source, protocol, lr=lr))
    return arms


def _workers(jobs: int | None, target: torch.device, tasks: int, collective: Collective) -> int:
    if jobs is None and collective.world_size > 1:
        jobs = 1  # under torchrun the ranks are the parallel workers, one network each
    return default_jobs(target, tasks) if jobs is None else min(jobs, tasks)


def _train_together(
    tasks: dict[str, list[ModelTask]],
    workers: int,
    progress: Progress | None,
    collective: Collective,
) -> dict[str, dict[str, ArchScore]]:
    """Every network of every arm in one queue, so parallel workers (and torchrun's
    ranks) never wait on an arm; the scores per arm and architecture."""
    queue = [task for arm_tasks in tasks.values() for task in arm_tasks]
    threads = torch.get_num_threads()
    scores = iter(
        run_tasks(queue, jobs=workers, threads=threads, progress=progress, collective=collective)
    )
    return {
        name: summarize_arm(arm_tasks, [next(scores) for _ in arm_tasks])
        for name, arm_tasks in tasks.items()
    }


def _archive_facts(dataset: Any, path: Path, arm: TrainingSet) -> ArchiveFacts:
    from habactl.format import storage_account

    info = dataset.info
    account = storage_account(info.json)
    return ArchiveFacts(
        path=str(path),
        content_digest=info.content_digest,
        objective=info.provenance.objective,
        bases=info.bases.count,
        expansion=int(dataset.expansion),
        training_images=arm.training_images,
        labels=info.label_kind,
        normalization=info.normalization.kind,
        ipc=info.storage.ipc,
        stored_values=account.stored_values,
        budget_values=account.budget_values,
    )


def _data_facts(dataset: Any, source: Any, test_images: int) -> DataFacts:
    recorded = dataset.info.provenance.fingerprint
    return DataFacts(
        name=source.name,
        fingerprint=source.fingerprint,
        matches_archive=source.fingerprint == recorded,
        train_images=len(source.train),
        test_images=test_images,
    )


def _baseline_report(arm: TrainingSet, results: dict[str, ArchScore]) -> BaselineReport:
    return BaselineReport(
        training_images=arm.training_images,
        epochs=arm.protocol.epochs,
        lr=arm.lr,
        results=results,
        note=arm.note,
        per_class=arm.per_class,
    )


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


__all__ = [
    "BASELINES",
    "DEVICES",
    "EvaluationReport",
    "TrainingSet",
    "archive_lr",
    "archive_training_set",
    "baseline_lr",
    "budget_per_class",
    "evaluate_archive",
    "evaluate_training_set",
    "full_training_set",
    "load_evaluation_teacher",
    "load_test_source",
    "parse_names",
    "prepare_test_images",
    "random_training_set",
    "resolve_device",
]
