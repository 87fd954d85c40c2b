"""A network's parameters as one flat vector, and the network as a function of it.

Trajectories are stored flat (one row per epoch) and trajectory matching differentiates
through many SGD steps of a student: one flat tensor per step, with the network's
weights as views into it (``torch.func.functional_call``), keeps that cheap and makes
every step's gradient a single tensor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


class FlatNet:
    """``net`` evaluated at a flat parameter vector, in ``named_parameters`` order."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.layout: list[tuple[str, tuple[int, ...]]] = [
            (name, tuple(p.shape)) for name, p in net.named_parameters()
        ]
        self.sizes = [math.prod(shape) for _, shape in self.layout]
        self.count = sum(self.sizes)

    def describe(self) -> list[list[Any]]:
        """JSON-ready layout: [[name, [shape...]], ...]."""
        return [[name, list(shape)] for name, shape in self.layout]

    def flatten(self) -> Tensor:
        """The module's current parameters as one float32 CPU vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.net.parameters()]).float().cpu()

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat`` shaped like the parameters (gradients flow to ``flat``)."""
        return {
            name: part.view(shape)
            for (name, shape), part in zip(self.layout, flat.split(self.sizes))
        }

    def load(self, flat: Tensor) -> None:
        with torch.no_grad():
            for p, part in zip(self.net.parameters(), flat.split(self.sizes)):
                p.copy_(part.view_as(p))

    def __call__(self, flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.net, self.unflatten(flat), (x,))
