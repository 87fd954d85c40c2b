"""Coreset baselines: real images kept as they are (no optimisation)."""

from __future__ import annotations

import torch
from torch import Tensor

from habactl.errors import HabaError


def random_per_class(labels: Tensor, per_class: int, num_classes: int, seed: int) -> Tensor:
    """Indices of `per_class` random images of each class, class-sorted, reproducible."""
    if per_class < 1:
        raise HabaError(f"need at least 1 image per class, got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    chosen: list[Tensor] = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c, as_tuple=False).flatten()
        if members.numel() < per_class:
            raise HabaError(
                f"class {c} has {members.numel()} training images; "
                f"cannot select {per_class} per class"
            )
        order = torch.randperm(members.numel(), generator=generator)[:per_class]
        chosen.append(members[order.sort().values])
    return torch.cat(chosen)
