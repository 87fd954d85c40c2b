"""Scoring: test accuracy of a trained network, and the summary over several models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def accuracy(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> float:
    """Fraction of `images` (already normalised) that `net` classifies as `labels`.

    Images may live on the CPU; they are moved batch by batch to `device` (default: the
    network's device).
    """
    if images.shape[0] == 0:
        return float("nan")
    if device is None:
        device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            predicted = net(batch).argmax(dim=1).cpu()
            correct += int((predicted == labels[start : start + batch_size].cpu()).sum())
    net.train(was_training)
    return correct / images.shape[0]


def summarize(accuracies: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (numpy's default, as the DD papers report)."""
    values = [float(a) for a in accuracies]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


__all__ = ["accuracy", "summarize"]
