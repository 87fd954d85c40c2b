"""A reference-structured DM iteration, for timing side by side with habactl.

NOT habactl's code path and not the authors' code: our own minimal implementation of the
*structure* of the public distribution-matching reference (Zhao & Bilen), written here
only so that `bench/distill.py side` can time the two loops on the same data, one thread
each. Each iteration:

- one freshly, randomly initialised ConvNet-3 (128 channels, instance norm, ReLU, 2×2
  average pool; a 1-channel 28×28 input is padded to 32×32 by its first convolution), its
  weights frozen;
- per class, one after the other: a random batch of that class's real images and the
  class's synthetic images, both through the same DSA-style augmentation (one op of
  color/crop/cutout/flip/scale/rotate, its random values drawn per image and then set
  equal to the first image's, the way the reference's Siamese mode shares them), the real
  embedding computed without a graph, the loss the squared distance of the two mean
  embeddings, summed over classes;
- one backward pass and one SGD step on the synthetic images.

What it leaves out of the reference: the evaluation passes, the logging, the ZCA option.
Timing only; the numbers it learns are not used anywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvNet3(nn.Module):
    """ConvNet-3 as the DD papers define it; ``embed`` is the flattened last block."""

    def __init__(self, channels: int, size: int, classes: int, width: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        side = size
        for depth in range(3):
            pad = 3 if channels == 1 and depth == 0 and size == 28 else 1
            layers += [
                nn.Conv2d(channels if depth == 0 else width, width, 3, padding=pad),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2),
            ]
            side = (side + 2 * pad - 2) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * side * side, classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)


def _shared(values: Tensor) -> Tensor:
    """Per-image draws made equal to the first one (Siamese: one transform for all)."""
    return values[:1].expand_as(values).clone()


def augment(x: Tensor, op: str, generator: torch.Generator) -> Tensor:
    """One DSA op on x (N, C, H, W) with per-image values set equal (see the module doc).

    ``generator`` is reset by the caller to the same state for the real and the
    synthetic batch of a class, so both get the same transform."""
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> Tensor:
        return _shared(torch.rand(n, *shape, generator=generator)).to(dev)

    if op == "color":
        x = x + (rand(1, 1, 1) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (rand(1, 1, 1) * 2.0) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (rand(1, 1, 1) + 0.5) + mean
    if op == "crop":  # translate by up to 1/8 of the side, zero fill, by gathering pixels
        s = int(h * 0.125 + 0.5)
        ty = (rand(1, 1) * (2 * s + 1)).floor().long() - s
        tx = (rand(1, 1) * (2 * s + 1)).floor().long() - s
        rows = torch.arange(h, device=dev).view(1, h, 1) + ty
        cols = torch.arange(w, device=dev).view(1, 1, w) + tx
        rows, cols = (rows + 1).clamp(0, h + 1), (cols + 1).clamp(0, w + 1)
        padded = F.pad(x, (1, 1, 1, 1))
        batch = torch.arange(n, device=dev).view(n, 1, 1)
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if op == "cutout":
        size = int(h * 0.5 + 0.5)
        cy = (rand(1, 1) * (h + 1 - size % 2)).long()
        cx = (rand(1, 1) * (w + 1 - size % 2)).long()
        r = torch.arange(h, device=dev).view(1, h, 1)
        c = torch.arange(w, device=dev).view(1, 1, w)
        hole = ((r - cy).abs() <= size // 2) & ((c - cx).abs() <= size // 2)
        return x * (~hole).unsqueeze(1).to(x.dtype)
    if op == "flip":
        return torch.where(rand(1, 1, 1) < 0.5, x.flip(3), x)
    if op == "scale":
        sx, sy = rand(1) * (1.2 - 1 / 1.2) + 1 / 1.2, rand(1) * (1.2 - 1 / 1.2) + 1 / 1.2
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.cat([sx, zero, zero], 1), torch.cat([zero, sy, zero], 1)], 1)
    else:  # rotate
        a = (rand(1) - 0.5) * 2 * math.radians(15)
        cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
        theta = torch.stack([torch.cat([cos, -sin, zero], 1), torch.cat([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)  # one grid per image
    return F.grid_sample(x, grid, align_corners=True)


OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


class ReferenceDM:
    """The loop above over class-sorted real images and a synthetic set of ``ipc`` per class."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        classes: int,
        ipc: int,
        real_per_class: int,
        *,
        seed: int = 0,
        lr: float = 1.0,
        flip: bool = True,
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.by_class = [images[labels == c] for c in range(classes)]
        self.channels, self.size = images.shape[1], images.shape[2]
        self.classes, self.ipc, self.real = classes, ipc, real_per_class
        picks = [
            part[torch.randperm(len(part), generator=self.generator)[:ipc]]
            for part in self.by_class
        ]
        self.synthetic = torch.cat(picks).clone().requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.synthetic], lr=lr, momentum=0.5)
        self.ops = tuple(op for op in OPS if flip or op != "flip")

    def step(self) -> float:
        net = ConvNet3(self.channels, self.size, self.classes)  # fresh random weights
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        loss = self.synthetic.new_zeros(())
        for c in range(self.classes):
            part = self.by_class[c]
            real = part[torch.randperm(len(part), generator=self.generator)[: self.real]]
            syn = self.synthetic[c * self.ipc : (c + 1) * self.ipc]
            op = self.ops[int(torch.randint(len(self.ops), (1,), generator=self.generator))]
            state = self.generator.get_state()
            real = augment(real, op, self.generator)
            self.generator.set_state(state)  # the same draws for the synthetic batch
            syn = augment(syn, op, self.generator)
            real_mean = net.embed(real).detach().mean(0)
            syn_mean = net.embed(syn).mean(0)
            loss = loss + ((real_mean - syn_mean) ** 2).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
