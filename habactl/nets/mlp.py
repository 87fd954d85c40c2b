"""The 3-layer MLP of the cross-architecture evaluation."""

from __future__ import annotations

from torch import Tensor, nn

from habactl.nets.base import Net, NetSpec, scaled


class MLP(Net):
    """flatten -> 128 -> ReLU -> 128 -> ReLU -> classes (128 times the width multiplier).

    An MLP has no conv to normalise: the spec's norm is not used."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        hidden = scaled(128, spec.width_mult)
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(spec.channels * spec.height * spec.width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, spec.num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.body(x)
