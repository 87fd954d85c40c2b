"""Architecture name -> constructor; build_net is the one entry point."""

from __future__ import annotations

from collections.abc import Callable

from habactl.errors import HabaError
from habactl.nets.alexnet import build_alexnet
from habactl.nets.base import NORMS, Net, check_shape
from habactl.nets.convnet import build_convnet
from habactl.nets.mlp import build_mlp
from habactl.nets.resnet import build_resnet18
from habactl.nets.vgg import build_vgg11

_BUILDERS: dict[str, Callable[..., Net]] = {
    "convnet": build_convnet,
    "mlp": build_mlp,
    "alexnet": build_alexnet,
    "vgg11": build_vgg11,
    "resnet18": build_resnet18,
}

ARCHITECTURES: tuple[str, ...] = tuple(_BUILDERS)


def build_net(
    arch: str,
    channels: int,
    height: int,
    width: int,
    num_classes: int,
    *,
    width_mult: float = 1.0,
    norm: str = "instance",
) -> Net:
    """A freshly initialised network (PyTorch default init, seeded by torch.manual_seed).

    Every network maps (N, channels, height, width) to (N, num_classes) logits and
    exposes ``embed(x) -> (N, feature_dim)``, ``classifier`` and ``feature_dim``.
    """
    builder = _BUILDERS.get(arch)
    if builder is None:
        raise HabaError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    if norm not in NORMS:
        raise HabaError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    check_shape(channels, height, width, num_classes)
    if not width_mult > 0:
        raise HabaError(f"width_mult must be positive, got {width_mult!r}")
    return builder(channels, height, width, num_classes, width_mult=width_mult, norm=norm)
