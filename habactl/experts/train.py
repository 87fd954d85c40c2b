"""Training expert trajectories on the real training set (MTT's buffer; docs/method.md).

Reference settings: SGD lr 0.01, no momentum, no weight decay, batch 256, DSA
augmentation (one draw per image) on every batch, ConvNet (depth 3 at 32 px, deeper for
larger images), 50 epochs. Images are
normalised exactly as ``habactl compress`` normalises them (per-channel mean and std of
the training split), so a student trained on the synthetic set lives in the same space.

Expert ``i`` draws everything (initial weights, batch order, augmentation) from its own
generator derived from (seed, i): a resumed buffer is the same as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from habactl.data.normalized import NormalizedTrain
from habactl.experts.buffer import (
    INDEX,
    KIND,
    VERSION,
    ExpertsError,
    check_buffer_target,
    differing,
    expert_file,
    read_index,
    settings_of,
    sha256_file,
    write_json_atomic,
    write_trajectory,
)
from habactl.experts.flat import FlatNet
from habactl.experts.index import ExpertsIndex
from habactl.nets import seeded
from habactl.nets.registry import arch_name
from habactl.runtime import device as runtime
from habactl.runtime.device import derived_generator, to_device
from habactl.runtime.distributed import SINGLE, Collective


@dataclass(frozen=True)
class ExpertSettings:
    experts: int = 5
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    arch: str = "convnet"
    width: float = 1.0
    augment: str = "color_crop_cutout_flip_scale_rotate"
    seed: int = 0
    device: str = "auto"


def expert_generator(seed: int, i: int) -> torch.Generator:
    """Expert ``i``'s own stream: its weights, batch order and augmentation."""
    return derived_generator("experts", seed, int(i))


def _check(s: ExpertSettings) -> None:
    if s.experts < 1 or s.epochs < 1 or s.batch_size < 1:
        raise ExpertsError("--experts, --epochs and --batch-size must be at least 1")
    if not (s.lr > 0 and s.momentum >= 0 and s.weight_decay >= 0 and s.width > 0):
        raise ExpertsError("--lr and --width must be positive, momentum and weight decay >= 0")


@dataclass(frozen=True)
class ExpertEpoch:
    """What ``progress`` hears after each epoch of an expert, or once for an expert an
    earlier run finished (``skipped``: then ``epoch == epochs`` and no loss)."""

    expert: int
    epoch: int
    epochs: int
    loss: float | None = None  # the epoch's mean training loss
    accuracy: float | None = None  # the epoch's training accuracy, a fraction
    skipped: bool = False


# progress(report) after every epoch; note(text) for messages
Progress = Callable[[ExpertEpoch], None]


def train_experts(
    source: Any, folder: str | Path, settings: ExpertSettings, **options: Any
) -> ExpertsIndex:
    """Check ``folder`` (``check_buffer_target``), then train into it; see ``fill_buffer``
    for the options (force, progress, note, collective)."""
    check_buffer_target(folder)
    return fill_buffer(source, folder, settings, **options)


def fill_buffer(
    source: Any,
    folder: str | Path,
    settings: ExpertSettings,
    *,
    force: bool = False,
    progress: Progress | None = None,
    note: Callable[[str], None] | None = None,
    collective: Collective = SINGLE,
) -> ExpertsIndex:
    """Train experts 0..N-1 into ``folder`` (created if needed), skipping finished ones.

    The folder is taken as checked by ``check_buffer_target`` (``train_experts`` checks
    it; ``habactl experts`` does before it loads the data). Returns the final index.
    ``force`` starts over in a folder made with other settings. ``collective``: the job
    whose ranks share the experts (torchrun's; ``SINGLE``: this process alone).
    """
    from habactl.training.augment import SiameseAugment

    _check(settings)
    folder = Path(folder)
    note = note or (lambda text: None)
    device = collective.device_for(settings.device)  # under torchrun: this rank's GPU
    # The index records the network built ("convnet-d4" for "convnet" at 64 px): MTT's
    # student is built from that name, so it has the experts' depth whatever the size.
    settings = replace(settings, arch=arch_name(settings.arch, source.height, source.width))
    data = NormalizedTrain.of(source, device)
    augment = SiameseAugment(settings.augment, flip=not source.is_digits)
    probe = _probe(settings, data)
    index = _index(source, settings, data, augment, probe)
    finished = _finished(folder, index, force, note)
    if collective.is_main:
        folder.mkdir(exist_ok=True)
    collective.barrier()  # the folder exists before any rank writes into it
    if collective.world_size == 1:  # one process: the index after every expert, so it resumes
        _save_index(folder, index, finished)
    # Under torchrun rank r trains experts r, r + N, ... (each from its own seeded stream,
    # so the files are those of one process) and writes their trajectory files; rank 0
    # writes the index once, complete, when every rank is done.
    mine = collective.share(settings.experts)
    for i in mine:
        if expert_file(i) in finished:
            if progress:
                progress(ExpertEpoch(i, settings.epochs, settings.epochs, skipped=True))
            continue
        finished[expert_file(i)] = _train_and_write(
            i, folder, settings, data, augment, device, probe.count, progress
        )
        if collective.world_size == 1:
            _save_index(folder, index, finished)
    if collective.world_size > 1:
        gathered = collective.gather_objects({i: finished[expert_file(i)] for i in mine})
        finished.update({entry["file"]: entry for entry in gathered.values()})
        if collective.is_main:
            _save_index(folder, index, finished)
        collective.barrier()  # no rank reports success before the index is in place
        index["experts"] = [finished[k] for k in sorted(finished)]
    return ExpertsIndex.from_json(index)


def _probe(settings: ExpertSettings, data: NormalizedTrain) -> FlatNet:
    """The network's parameter layout (built on the CPU, the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        return FlatNet(
            seeded.build(
                settings.arch,
                data.shape,
                data.classes,
                width_mult=settings.width,
                device=torch.device("cpu"),
                generator=torch.Generator(),
                trainable=True,
            )
        )


def _index(
    source: Any, settings: ExpertSettings, data: NormalizedTrain, augment: Any, probe: FlatNet
) -> dict[str, Any]:
    """The buffer's index, with no experts yet."""
    from habactl import __version__

    channels, height, width = data.shape
    return {
        "kind": KIND,
        "version": VERSION,
        "library": f"habactl {__version__}",
        "dataset": {
            "name": source.name,
            "fingerprint": source.fingerprint,
            "classes": list(source.classes),
            "image": {"channels": channels, "height": height, "width": width},
            "train": int(data.labels.shape[0]),
        },
        "normalization": dict(data.normalization),
        "arch": {"name": settings.arch, "width": float(settings.width), "norm": "instance"},
        "parameters": {"count": probe.count, "layout": probe.describe()},
        "training": {
            "epochs": settings.epochs,
            "lr": float(settings.lr),
            "momentum": float(settings.momentum),
            "weight_decay": float(settings.weight_decay),
            "batch_size": settings.batch_size,
            "augmentation": augment.to_config(),
            "seed": settings.seed,
            "optimizer": "sgd",
            "loss": "cross-entropy",
        },
        "experts": [],
    }


def _finished(
    folder: Path, index: dict[str, Any], force: bool, note: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """The intact experts of an earlier run with the same settings, by file name."""
    finished: dict[str, dict[str, Any]] = {}
    if not (folder / INDEX).exists():
        return finished
    try:
        old = read_index(folder)
    except ExpertsError:
        if not force:
            raise
        return finished
    changed = differing(settings_of(old.json), settings_of(index))
    if changed and not force:
        raise ExpertsError(
            f"{folder} holds experts made with other settings "
            f"({', '.join(changed[:4])}); use another folder, or --force to "
            f"start over"
        )
    if not changed:
        for entry in old.experts:
            path = folder / entry.file
            if path.is_file() and sha256_file(path) == entry.sha256:
                finished[entry.file] = entry.to_json()
            else:
                note(f"{entry.file} is missing or damaged; training it again")
    return finished


def _save_index(folder: Path, index: dict[str, Any], finished: dict[str, dict[str, Any]]) -> None:
    index["experts"] = [finished[k] for k in sorted(finished)]
    write_json_atomic(folder / INDEX, index)


def _train_and_write(
    i: int,
    folder: Path,
    settings: ExpertSettings,
    data: NormalizedTrain,
    augment: Any,
    device: torch.device,
    parameters: int,
    progress: Progress | None,
) -> dict[str, Any]:
    """Train expert ``i``, write its trajectory file; its entry in the index."""
    name = expert_file(i)
    started = time.perf_counter()
    trajectory, accuracy = _train_one(
        i, settings, data.shape, data.classes, data.images, data.labels, augment, device, progress
    )
    sha = write_trajectory(
        folder / name,
        trajectory,
        {"expert": str(i), "epochs": str(settings.epochs), "parameters": str(parameters)},
    )
    return {
        "file": name,
        "expert": i,
        "sha256": sha,
        "train_accuracy": round(accuracy, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _train_one(
    i: int,
    s: ExpertSettings,
    shape: tuple[int, int, int],
    classes: int,
    images: Any,  # a tensor, or a store's images (read when indexed)
    labels: torch.Tensor,
    augment: Any,
    device: torch.device,
    progress: Progress | None,
) -> tuple[torch.Tensor, float]:
    generator = expert_generator(s.seed, i)
    net = seeded.build(
        s.arch,
        shape,
        classes,
        width_mult=s.width,
        device=device,
        generator=generator,
        trainable=True,
    )
    net.train()
    flat = FlatNet(net)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
    )
    rows = [flat.flatten()]
    n = labels.shape[0]
    accuracy = 0.0
    for epoch in range(1, s.epochs + 1):
        order = to_device(torch.randperm(n, generator=generator), device)
        # Summed on the device (the loss in float64, as Python would) and read once an
        # epoch: the batches never wait for the device.
        correct = torch.zeros((), dtype=torch.long, device=device)
        summed = torch.zeros((), dtype=torch.float64, device=device)
        for batch in order.split(s.batch_size):
            x = augment(images[batch], generator, per_sample=True)
            logits = net(x)
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += (logits.argmax(1) == labels[batch]).sum()
            summed += loss.detach().double() * len(batch)
        read = runtime.host_values({"loss": summed, "correct": correct})  # once an epoch
        total_loss = read["loss"]
        if not math.isfinite(total_loss):
            raise ExpertsError(
                f"expert {i}: the loss became non-finite in epoch {epoch}; lower --lr"
            )
        rows.append(flat.flatten())
        accuracy = read["correct"] / n
        if progress:
            progress(ExpertEpoch(i, epoch, s.epochs, loss=total_loss / n, accuracy=accuracy))
    return torch.stack(rows), accuracy
