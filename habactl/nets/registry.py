"""Architecture name -> constructor; build_net is the one entry point.

``convnet`` is the field's ConvNet at the depth the field uses for the image size
(`convnet_depth`); ``convnet-d3`` ... ``convnet-d6`` pick a depth outright. `arch_name`
is the name a run records for the network it builds, so that an archive says which
depth it was made and evaluated with.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from habactl.errors import HabaError
from habactl.nets.alexnet import AlexNet
from habactl.nets.base import NORMS, Net, NetSpec, check_shape
from habactl.nets.convnet import ConvNet
from habactl.nets.mlp import MLP
from habactl.nets.resnet import ResNet18
from habactl.nets.vgg import VGG

CONVNET = "convnet"  # the depth follows the image size
CONVNET_DEPTHS = (3, 4, 5, 6)
# The field's sizes for each depth: 32 px (CIFAR), 64 (Tiny ImageNet), 128 (ImageNet
# subsets), 256. A size in between takes the depth of the nearest one on a log scale.
_DEPTH_SIDES = {3: 32, 4: 64, 5: 128, 6: 256}

# Name -> the network built from a NetSpec (VGG's default layout is VGG-11).
_BUILDERS: dict[str, Callable[[NetSpec], Net]] = {
    **{f"{CONVNET}-d{depth}": partial(ConvNet, depth=depth) for depth in CONVNET_DEPTHS},
    "mlp": MLP,
    "alexnet": AlexNet,
    "vgg11": VGG,
    "resnet18": ResNet18,
}

ARCHITECTURES: tuple[str, ...] = (CONVNET, *_BUILDERS)


def convnet_depth(height: int, width: int) -> int:
    """The ConvNet depth for images of this size: 3 up to 45 px (the smaller side), 4 up
    to 90, 5 up to 181, 6 above; so 3 at 32 px, 4 at 64, 5 at 128, 6 at 224 and 256.

    A side goes to the depth of the nearest of 32, 64, 128, 256 on a log scale: the
    largest side a depth takes is its size times sqrt(2), rounded down.
    """
    side = min(height, width)
    for depth in CONVNET_DEPTHS[:-1]:
        if side * side <= 2 * _DEPTH_SIDES[depth] ** 2:
            return depth
    return CONVNET_DEPTHS[-1]


def resolve_arch(arch: str, height: int, width: int) -> str:
    """The architecture that is built: ``convnet`` becomes ``convnet-dN`` for the size;
    other names are themselves. HabaError for an unknown name."""
    if arch == CONVNET:
        return f"{CONVNET}-d{convnet_depth(height, width)}"
    if not isinstance(arch, str) or arch not in _BUILDERS:
        raise HabaError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return arch


def arch_name(arch: str, height: int, width: int) -> str:
    """The name a run records for `arch` on images of this size (archives, expert
    buffers, provenance, evaluation results).

    ``convnet`` stays ``convnet`` where it means depth 3 (sides up to 45 px: every
    archive of small images reads as before) and is recorded with its depth elsewhere
    (``convnet-d4`` at 64 px). Names given explicitly are kept as given.
    """
    built = resolve_arch(arch, height, width)
    return CONVNET if arch == CONVNET and built == f"{CONVNET}-d3" else built


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
    ``convnet`` takes the depth for the image size (`convnet_depth`).
    """
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise HabaError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    if norm not in NORMS:
        raise HabaError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    check_shape(channels, height, width, num_classes)
    builder = _BUILDERS[resolve_arch(arch, height, width)]
    if not width_mult > 0:
        raise HabaError(f"width_mult must be positive, got {width_mult!r}")
    return builder(NetSpec(channels, height, width, num_classes, width_mult, norm))
