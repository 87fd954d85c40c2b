"""Train one network from scratch on an in-memory training set.

The synthetic sets are tiny (10–150 images), so the whole set lives on the device as
one tensor and each step indexes it directly: no DataLoader, no per-step decoding.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from habactl.errors import HabaError
from habactl.evaluation.protocol import Protocol

# Called at the start of every epoch, after the lr of that epoch is set.
EpochCallback = Callable[[int, torch.optim.Optimizer], None]


def make_augment(protocol: Protocol, *, flip: bool) -> Any | None:
    """The DSA transform of the protocol (None when augmentation is off)."""
    if protocol.augmentation == "none":
        return None
    from habactl.augment import SiameseAugment

    return SiameseAugment(flip=flip)


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
    on_epoch: Optional[EpochCallback] = None,
) -> nn.Module:
    """Train `net` in place with the protocol's SGD schedule; returns it in eval mode.

    `images` (N, C, H, W) are already in the network's input space and on the same
    device as `net`; `labels` are (N,) class indices or (N, classes) soft labels.
    `generator` (a CPU generator) drives the shuffling and the augmentation draws, so
    a seeded generator plus a seeded initialisation gives the same network every run
    on a CPU. Each epoch is one pass over a fresh permutation in batches of
    `protocol.batch_size` (the last batch may be smaller).
    """
    if images.shape[0] == 0:
        raise HabaError("cannot train on an empty training set")
    if images.shape[0] != labels.shape[0]:
        raise HabaError(f"{images.shape[0]} training images but {labels.shape[0]} labels")
    base_lr = protocol.lr if lr is None else float(lr)
    if not base_lr > 0:
        raise HabaError(f"lr must be positive, got {base_lr!r}")
    generator = generator or torch.Generator().manual_seed(protocol.seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=base_lr, momentum=protocol.momentum,
                                weight_decay=protocol.weight_decay)
    count = images.shape[0]
    net.train()
    for epoch in range(protocol.epochs):
        for group in optimizer.param_groups:
            group["lr"] = protocol.lr_at(epoch, base_lr)
        if on_epoch is not None:
            on_epoch(epoch, optimizer)
        order = torch.randperm(count, generator=generator).to(images.device)
        for start in range(0, count, protocol.batch_size):
            index = order[start:start + protocol.batch_size]
            batch = images[index]
            if augment is not None:
                batch = augment_batch(augment, batch, generator)
            loss = loss_of(net(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


def augment_batch(augment: Any, batch: Tensor, generator: torch.Generator) -> Tensor:
    """DSA on a training batch: parameters drawn per sample (not shared, not Siamese)."""
    params = augment.sample(generator, batch=batch.shape[0])
    with torch.no_grad():
        return augment.apply(batch, params)


__all__ = ["EpochCallback", "augment_batch", "loss_of", "make_augment", "train_net"]
