"""Train a teacher: a network with batch norm, on a data set or a store of any size.

The teacher-driven objectives need batch-norm running statistics (recovery matches
them) and a confident classifier (selection and relabelling read its outputs). Settings
for data habactl can run on a CPU: SGD with momentum 0.9, weight decay 5e-4, a cosine
schedule over the epochs, batch 128, the DSA ops drawn per image (no flip on digits),
the images normalised as ``habactl compress`` normalises them, so a teacher reads
decoded synthetic images as they are.

Under torchrun every rank takes its share of each batch (the batch order comes from
one seeded stream on every rank) and the gradients are summed before each step: the
ranks hold the same weights throughout, and rank 0 writes the file. Batch-norm running
statistics are averaged over the ranks at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from habactl.data.normalized import NormalizedTrain, normalized_test
from habactl.nets import seeded
from habactl.nets.registry import arch_name
from habactl.runtime import device as runtime
from habactl.runtime.device import derived_generator, to_device
from habactl.runtime.distributed import SINGLE, Collective
from habactl.teacher.file import Teacher, TeacherError, TeacherInfo, load_teacher, save_teacher


@dataclass(frozen=True)
class TeacherSettings:
    arch: str = "convnet"  # ConvNet-BN at the depth for the image size; or resnet18, ...
    width: float = 1.0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "color_crop_cutout_flip_scale_rotate"
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        from habactl.nets.registry import resolve_arch

        resolve_arch(self.arch, 32, 32)  # HabaError naming the known ones
        if self.arch == "mlp":  # the teacher-driven objectives read batch-norm statistics
            raise TeacherError("a teacher needs batch norm, which --arch mlp has not")
        if self.epochs < 1 or self.batch_size < 1:
            raise TeacherError("--epochs and --batch-size must be at least 1")
        if not (self.lr > 0 and self.width > 0):
            raise TeacherError("--lr and --width must be positive")
        if not (0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise TeacherError("momentum must lie in [0, 1) and weight decay must be >= 0")


@dataclass(frozen=True)
class TeacherEpoch:
    """What ``progress`` hears after each epoch."""

    epoch: int  # 1-based
    epochs: int
    loss: float  # mean training loss of the epoch (on this rank's share)
    accuracy: float  # training accuracy of the epoch, a fraction


Progress = Callable[[TeacherEpoch], None]
# (batches done so far, batches in the whole run): after every step, for a live display.
StepProgress = Callable[[int, int], None]


def train_teacher(
    source: Any,
    output: str | Path,
    settings: TeacherSettings = TeacherSettings(),
    *,
    progress: Progress | None = None,
    collective: Collective = SINGLE,
    step_progress: StepProgress | None = None,
) -> Teacher:
    """Train a teacher on `source`'s training split, score it on the test split, write
    it to `output` (rank 0, atomically) and return it as read back from the file."""
    settings.check()
    device = collective.device_for(settings.device)
    data = NormalizedTrain.of(source, device)
    arch = arch_name(settings.arch, source.height, source.width)
    net = seeded.build(
        arch,
        data.shape,
        data.classes,
        width_mult=settings.width,
        device=device,
        generator=derived_generator("teacher", settings.seed, "init"),
        trainable=True,
        norm="batch",
    )
    train_accuracy = _train(
        net, data, settings, source.is_digits, progress, collective, step_progress
    )
    test_accuracy = _test_accuracy(net, source, data.normalization)
    info = TeacherInfo(
        arch=arch,
        width=float(settings.width),
        norm="batch",
        classes=tuple(source.classes),
        image_shape=data.shape,
        normalization=dict(data.normalization),
        dataset={"name": source.name, "fingerprint": source.fingerprint},
        training={
            **asdict(settings),
            "arch": arch,
            "optimizer": "sgd",
            "schedule": "cosine",
            "loss": "cross-entropy",
            "train_images": int(data.labels.shape[0]),
            "train_accuracy": round(train_accuracy, 4),
            "test_accuracy": round(test_accuracy, 4),
            "ranks": collective.world_size,
        },
    )
    if collective.is_main:
        save_teacher(output, net, info)
    collective.barrier()  # every rank reads the finished file
    return load_teacher(output, device=device)


def _train(
    net: nn.Module,
    data: NormalizedTrain,
    s: TeacherSettings,
    is_digits: bool,
    progress: Progress | None,
    collective: Collective,
    step_progress: StepProgress | None = None,
) -> float:
    """SGD with a cosine schedule; the last epoch's training accuracy."""
    from habactl.training.augment import SiameseAugment

    augment = SiameseAugment(s.augment, flip=not is_digits)
    order_stream = derived_generator("teacher", s.seed, "order")  # the same on every rank
    augment_stream = derived_generator("teacher", s.seed, ("augment", collective.rank))
    optimizer = torch.optim.SGD(
        net.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
    )
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:  # every rank sums the same list of tensors, even a rank with no share
        p.grad = torch.zeros_like(p)
    count = int(data.labels.shape[0])
    device = data.labels.device
    accuracy = 0.0
    batches = math.ceil(count / s.batch_size)
    net.train()
    for epoch in range(s.epochs):
        for group in optimizer.param_groups:
            group["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * epoch / s.epochs))
        order = to_device(torch.randperm(count, generator=order_stream), device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        summed = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        for step, batch in enumerate(order.split(s.batch_size), 1):
            mine = batch[collective.rank :: collective.world_size]
            optimizer.zero_grad(set_to_none=False)
            if len(mine):
                x = augment(data.images[mine], augment_stream, per_sample=True)
                logits = net(x)
                loss = F.cross_entropy(logits, data.labels[mine], reduction="sum")
                (loss / len(batch)).backward()  # the ranks' shares sum to the batch mean
                correct += (logits.argmax(1) == data.labels[mine]).sum()
                summed += loss.detach().double()
                seen += len(mine)
            if collective.world_size > 1:
                collective.all_reduce_sum([p.grad for p in params if p.grad is not None])
            optimizer.step()
            if step_progress is not None and collective.is_main:
                step_progress(epoch * batches + step, s.epochs * batches)
        read = runtime.host_values({"loss": summed, "correct": correct})  # once an epoch
        if not math.isfinite(read["loss"]):
            raise TeacherError(f"the loss became non-finite in epoch {epoch + 1}; lower --lr")
        accuracy = read["correct"] / max(1, seen)
        if progress is not None and collective.is_main:
            progress(TeacherEpoch(epoch + 1, s.epochs, read["loss"] / max(1, seen), accuracy))
    _average_running_stats(net, collective)
    return accuracy


def _average_running_stats(net: nn.Module, collective: Collective) -> None:
    """Each rank saw its own shares: the file keeps the mean of their statistics."""
    if collective.world_size == 1:
        return
    stats = [
        buffer
        for module in net.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buffer in (module.running_mean, module.running_var)
        if buffer is not None
    ]
    collective.all_reduce_sum(stats)
    for buffer in stats:
        buffer.div_(collective.world_size)


def _test_accuracy(net: nn.Module, source: Any, normalization: dict[str, Any]) -> float:
    from habactl.evaluation.score import accuracy

    return accuracy(net.eval(), normalized_test(source, normalization), source.test.labels)


__all__ = ["TeacherEpoch", "TeacherSettings", "train_teacher"]
