"""Scoring a network on the test split: the answer, and the memory it holds per batch."""

from __future__ import annotations

import torch
from torch import nn

from habactl.evaluation.score import BATCH_PIXELS, accuracy


class _Recording(nn.Module):
    """Predicts the class stored in the image's first pixel; records its batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.batches: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(images.shape[0])
        return nn.functional.one_hot(images[:, 0, 0, 0].long(), 3).float()


def _images(count: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(count) % 3
    images = torch.zeros(count, 1, side, side)
    images[:, 0, 0, 0] = labels.float()
    return images, labels


def test_accuracy_counts_the_right_answers():
    net = _Recording()
    images, labels = _images(10, 8)
    wrong = labels.clone()
    wrong[:4] = (wrong[:4] + 1) % 3
    assert accuracy(net, images, labels) == 1.0
    assert accuracy(net, images, wrong) == 0.6


def test_large_images_are_scored_in_smaller_batches():
    """A 512-image batch of 64x64 images would hold 1 GiB per ConvNet activation map."""
    net = _Recording()
    images, labels = _images(300, 64)
    assert accuracy(net, images, labels, batch_size=512) == 1.0
    assert max(net.batches) * 64 * 64 <= BATCH_PIXELS and sum(net.batches) == 300
    small = _Recording()
    images, labels = _images(300, 32)
    accuracy(small, images, labels, batch_size=512)
    assert small.batches == [300]  # 32x32 and below: the batch size asked for
