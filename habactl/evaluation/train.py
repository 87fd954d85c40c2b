"""Train one network from scratch on an in-memory training set.

The synthetic sets are tiny (10–150 images), so the whole set lives on the device as
one tensor and each step indexes it directly: no DataLoader, no per-step decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from habactl.errors import HabaError
from habactl.evaluation.protocol import Protocol
from habactl.runtime.device import to_device

# Called at the start of every epoch, after the lr of that epoch is set.
EpochCallback = Callable[[int, torch.optim.Optimizer], None]
LossFn = Callable[[Tensor, Tensor], Tensor]


def make_augment(protocol: Protocol, *, flip: bool) -> Any | None:
    """The protocol's batch transform: DSA, or the random resized crop and flip of the
    distillation recipe (None when augmentation is off)."""
    if protocol.augmentation == "none":
        return None
    if protocol.augmentation == "rrc_flip":
        from habactl.training.resized_crop import ResizedCropFlip

        return ResizedCropFlip(protocol.crop_scale, flip=flip)
    from habactl.training.augment import SiameseAugment

    return SiameseAugment(flip=flip)


def make_optimizer(protocol: Protocol, params: Any, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (the standard protocol) or AdamW (the distillation recipe)."""
    if protocol.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=protocol.weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
    )


def make_loss(protocol: Protocol) -> LossFn:
    """Cross-entropy (hard or soft labels), or the KD loss at the protocol's temperature
    against the labels as class probabilities (habactl.training.kd)."""
    if protocol.loss == "kd":
        from habactl.training.kd import KDLoss

        return KDLoss(protocol.temperature)
    return loss_of


def loss_of(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against hard (N,) int labels or soft (N, classes) probabilities."""
    if targets.dim() == 2:
        return F.cross_entropy(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets)


def train_net(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    protocol: Protocol,
    *,
    lr: float | None = None,
    augment: Any | None = None,
    generator: torch.Generator | None = None,
    on_epoch: EpochCallback | None = None,
    teacher: Any | None = None,
    views: Any | None = None,
) -> nn.Module:
    """Train `net` in place with the protocol's optimiser, schedule and loss; returns it
    in eval mode.

    `images` (N, C, H, W) are already in the network's input space and on the same
    device as `net`; `labels` are (N,) class indices or (N, classes) soft labels.
    `generator` (a CPU generator) drives the shuffling and the augmentation draws, so
    a seeded generator plus a seeded initialisation gives the same network every run
    on a CPU. Each epoch is one pass over a fresh permutation in batches of
    `protocol.batch_size` (the last batch may be smaller). With `teacher` (a
    habactl.teacher.Teacher on the same device, kd protocols only) the targets are the
    teacher's probabilities at the protocol's temperature on each augmented batch
    (online distillation), and the labels are not read. With `views` (a
    habactl.training.views.CropViews of the same items, format 1.4 per-crop labels) each
    item's stored view of the epoch is the augmentation and its stored label the target.
    """
    if images.shape[0] == 0:
        raise HabaError("cannot train on an empty training set")
    if images.shape[0] != labels.shape[0]:
        raise HabaError(f"{images.shape[0]} training images but {labels.shape[0]} labels")
    if views is not None and (teacher is not None or views.items != images.shape[0]):
        raise HabaError("stored views need their own items' images, and no teacher")
    base_lr = protocol.lr if lr is None else float(lr)
    if not base_lr > 0:
        raise HabaError(f"lr must be positive, got {base_lr!r}")
    generator = generator or torch.Generator().manual_seed(protocol.seed)
    optimizer = make_optimizer(protocol, net.parameters(), base_lr)
    loss = make_loss(protocol)
    if teacher is not None:
        if protocol.loss != "kd":
            raise HabaError("a teacher gives targets to the kd loss only")
        from habactl.training.kd import KDLoss

        assert isinstance(loss, KDLoss)
        loss = loss.tempered
    count = images.shape[0]
    chunk = chunk_size(net, images.device)
    net.train()
    for epoch in range(protocol.epochs):
        for group in optimizer.param_groups:
            group["lr"] = protocol.lr_at(epoch, base_lr)
        if on_epoch is not None:
            on_epoch(epoch, optimizer)
        order = to_device(torch.randperm(count, generator=generator), images.device)
        for start in range(0, count, protocol.batch_size):
            index = order[start : start + protocol.batch_size]
            batch = images[index]
            if views is not None:  # the stored crops and their labels
                batch = views.apply(batch, epoch, index)
                targets = views.targets(epoch, index).to(batch.device)
            else:
                if augment is not None:
                    batch = augment_batch(augment, batch, generator)
                targets = (
                    labels[index]
                    if teacher is None
                    else teacher.probabilities(batch, temperature=protocol.temperature)
                )
            optimizer.zero_grad(set_to_none=True)
            backward_in_chunks(net, batch, targets, chunk, loss)
            optimizer.step()
    return net.eval()


# Images per forward/backward on a CPU: ConvNet-3's 128x32x32 maps of 16 images (8 MiB)
# keep the elementwise layers (norm, ReLU, pool and their backward) in cache. With
# `bench/train_step.py` (1 thread, the other core busy), a 190-image step ran 1.39x
# faster than the whole batch in chunks of 16, 1.10x in chunks of 32; a 256-image step
# 1.13x and 1.10x.
CPU_CHUNK = 16


def chunk_size(net: nn.Module, device: torch.device) -> int | None:
    """Chunk the batch on a CPU when no layer mixes images (no batch norm); else None."""
    if device.type != "cpu" or any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()
    ):
        return None
    return CPU_CHUNK


def backward_in_chunks(
    net: nn.Module,
    batch: Tensor,
    targets: Tensor,
    chunk: int | None,
    loss: LossFn | None = None,
) -> None:
    """Accumulate the gradient of the batch's mean loss (`loss`, default cross-entropy),
    ``chunk`` images at a time.

    Each chunk's mean loss is weighted by its share of the batch, so the sum of the
    chunks' gradients is the whole batch's gradient (up to float rounding)."""
    loss = loss or loss_of
    total = batch.shape[0]
    if chunk is None or total <= chunk:
        loss(net(batch), targets).backward()
        return
    for part, target in zip(batch.split(chunk), targets.split(chunk)):
        (loss(net(part), target) * (part.shape[0] / total)).backward()


def augment_batch(augment: Any, batch: Tensor, generator: torch.Generator) -> Tensor:
    """DSA on a training batch: parameters drawn per sample (not shared, not Siamese)."""
    params = augment.sample(generator, batch=batch.shape[0])
    with torch.no_grad():
        return augment.apply(batch, params)


__all__ = [
    "EpochCallback",
    "augment_batch",
    "backward_in_chunks",
    "loss_of",
    "make_augment",
    "make_loss",
    "make_optimizer",
    "train_net",
]
