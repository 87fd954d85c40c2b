"""Scoring: test accuracy of a trained network, and the summary over several models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from habactl.runtime.device import to_device

# The most pixels one scoring batch holds: 512 images of 32x32. Larger images go in
# proportionally fewer per batch (128 at 64x64, 10 at 224x224), so a batch's activation
# maps stay the size they have at 32x32 (ConvNet's first map of 512 images at 64x64 alone
# is 1 GiB).
BATCH_PIXELS = 512 * 32 * 32


def accuracy(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> float:
    """Fraction of `images` (already normalised) that `net` classifies as `labels`,
    `batch_size` images at a time (fewer for images above 32x32, see BATCH_PIXELS).

    Images may live on the CPU; they are moved batch by batch to `device` (default: the
    network's device). The count of correct answers stays on the device until the end:
    one read per call, not one per batch.
    """
    if images.shape[0] == 0:
        return float("nan")
    if device is None:
        device = next(net.parameters()).device
    pixels = int(images.shape[-2]) * int(images.shape[-1])
    batch_size = max(1, min(batch_size, BATCH_PIXELS // pixels))
    was_training = net.training
    net.eval()
    device = torch.device(device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = to_device(images[start : start + batch_size], device)
            truth = to_device(labels[start : start + batch_size], device)
            correct += (net(batch).argmax(dim=1) == truth).sum()
    net.train(was_training)
    return int(correct) / images.shape[0]


def summarize(accuracies: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (numpy's default, as the DD papers report)."""
    values = [float(a) for a in accuracies]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


__all__ = ["accuracy", "summarize"]
