"""What every network shares: what it is built from (NetSpec), an embedding body and a
linear head, the norm layer and the conv -> norm -> ReLU block."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from habactl.errors import HabaError

NORMS = ("instance", "batch", "none")


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer after a conv; "instance" is GroupNorm(C, C) as in DD work."""
    if norm == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise HabaError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")


@dataclass(frozen=True)
class NetSpec:
    """What every architecture is built from: the input images, the classes, a width
    multiplier for its channel counts and the norm after each conv."""

    channels: int
    height: int
    width: int
    num_classes: int
    width_mult: float = 1.0
    norm: str = "instance"


def conv_norm_relu(
    in_ch: int,
    out_ch: int,
    norm: str,
    *,
    kernel_size: int,
    padding: int = 0,
    stride: int = 1,
    bias: bool = True,
) -> list[nn.Module]:
    """Conv2d -> norm -> ReLU, created in that order: a network's initial weights are
    drawn in the order its layers are made."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias)
    return [conv, make_norm(norm, out_ch), nn.ReLU()]


def scaled(width: int, width_mult: float) -> int:
    """A channel count scaled by width_mult, never below 1."""
    return max(1, round(width * width_mult))


def can_pool(height: int, width: int, *, last: bool = False) -> bool:
    """Whether a 2x pool fits a height x width map.

    Instance norm on a 1x1 map outputs its bias whatever the input, so a pool that
    more conv+norm layers follow must leave at least 2x2; the last pool may reach 1.
    """
    return min(height, width) // 2 >= (1 if last else 2)


class Net(nn.Module):
    """A classifier split as ``classifier(embed(x))``.

    Subclasses set ``self.classifier`` (an ``nn.Linear``) and ``self.feature_dim`` and
    implement ``embed``. Distribution matching and the contrastive extractor use the
    body alone. No in-place ops anywhere, so ``torch.func.functional_call`` and double
    backward (gradient matching) work.
    """

    classifier: nn.Linear
    feature_dim: int

    def embed(self, x: Tensor) -> Tensor:
        """Features of x: (N, C, H, W) -> (N, feature_dim)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def check_shape(channels: int, height: int, width: int, num_classes: int) -> None:
    for name, value in (
        ("channels", channels),
        ("height", height),
        ("width", width),
        ("num_classes", num_classes),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise HabaError(f"network {name} must be a positive integer, got {value!r}")


__all__ = [
    "NORMS",
    "Net",
    "NetSpec",
    "can_pool",
    "check_shape",
    "conv_norm_relu",
    "make_norm",
    "scaled",
]
