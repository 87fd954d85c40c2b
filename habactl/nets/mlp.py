"""The 3-layer MLP of the cross-architecture evaluation."""

from __future__ import annotations

from torch import Tensor, nn

from habactl.nets.base import Net, scaled


class MLP(Net):
    """flatten -> 128 -> ReLU -> 128 -> ReLU -> classes."""

    def __init__(
        self, channels: int, height: int, width: int, num_classes: int, *, hidden: int = 128
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.body(x)


def build_mlp(
    channels: int,
    height: int,
    width: int,
    num_classes: int,
    *,
    width_mult: float = 1.0,
    norm: str = "instance",
) -> MLP:
    # An MLP has no conv to normalise; norm is accepted so every arch shares one signature.
    del norm
    return MLP(channels, height, width, num_classes, hidden=scaled(128, width_mult))
