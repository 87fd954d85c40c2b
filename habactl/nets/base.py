"""What every network shares: an embedding body, a linear head, and the norm layer."""

from __future__ import annotations

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


def scaled(width: int, width_mult: float) -> int:
    """A channel count scaled by width_mult, never below 1."""
    return max(1, round(width * width_mult))


def can_pool(side: int, *, last: bool = False) -> bool:
    """Whether a 2x pool fits here.

    Instance norm on a 1x1 map outputs its bias whatever the input, so a pool that
    more conv+norm layers follow must leave at least 2x2; the last pool may reach 1.
    """
    return side // 2 >= (1 if last else 2)


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


__all__ = ["NORMS", "Net", "can_pool", "check_shape", "make_norm", "scaled"]
