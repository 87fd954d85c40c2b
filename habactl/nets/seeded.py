"""Networks drawn afresh from an explicit generator: DM's embedder, the contrastive
extractor, the networks of gradient and trajectory matching, MTT's experts.

Architectures come from ``habactl.nets.registry``; only their initial weights are drawn
here, from an explicit CPU generator, so that a run is reproducible from its seed alone
(PyTorch's own init would read the global RNG) and identical on every device. The distribution is
PyTorch's default: conv and linear weights and biases uniform on ±1/sqrt(fan_in)
(kaiming_uniform with a = sqrt(5)); norm layers weight 1, bias 0.

A DM iteration needs a new random network: re-drawing the weights of one module in
place costs a few hundred thousand random numbers and no module construction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from habactl.nets.base import Net
from habactl.nets.convnet import ConvNet
from habactl.nets.pool import pool2
from habactl.nets.registry import build_net
from habactl.runtime.device import to_device

# Images per forward on a CPU. ConvNet-3's first block makes a 128x32x32 map per image
# (512 KiB); in batches of 32 the elementwise layers (norm, ReLU, pool) stay in cache, and
# on a 2-core CPU that runs ~1.5-2x faster than batches of 128-640 (bench/distill.py).
# Larger images get proportionally fewer per chunk (8 at 64x64, 1 from 182x182 on), so a
# chunk's maps stay the same size: 32 images of 224x224 would need ~800 MiB per layer.
CPU_CHUNK = 32
CPU_CHUNK_PIXELS = CPU_CHUNK * 32 * 32


@torch.no_grad()
def redraw(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter of ``module`` in place, in module order."""
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            weight = sub.weight
            fan_in = weight.shape[1] * math.prod(weight.shape[2:])
            if isinstance(sub, nn.ConvTranspose2d):
                fan_in = weight.shape[0] * math.prod(weight.shape[2:])
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            _uniform(weight, bound, generator)
            if sub.bias is not None:
                _uniform(sub.bias, bound, generator)
        elif isinstance(sub, (nn.GroupNorm, nn.BatchNorm2d)):
            if getattr(sub, "weight", None) is not None:
                sub.weight.fill_(1.0)
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()
            if isinstance(sub, nn.BatchNorm2d):
                sub.reset_running_stats()


def _uniform(tensor: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    values = torch.rand(tensor.shape, generator=generator, dtype=torch.float32)
    tensor.copy_(to_device(values.mul_(2 * bound).sub_(bound), tensor.device))


def build(
    arch: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width_mult: float = 1.0,
    device: torch.device,
    generator: torch.Generator,
    trainable: bool,
    norm: str = "instance",
) -> Net:
    """A network from ``habactl.nets`` with weights drawn from ``generator`` (``norm``:
    the layer after each conv; teachers use "batch")."""
    # Construction draws PyTorch's default init from the global RNG; fork it so that
    # building a network leaves the caller's random state untouched.
    with torch.random.fork_rng(devices=[]):
        net = build_net(arch, *image_shape, num_classes, width_mult=width_mult, norm=norm)
    redraw(net, generator)
    net.requires_grad_(trainable)
    return net.to(device)


def chunk_size(device: torch.device, image_shape: tuple[int, ...] | None = None) -> int:
    """Cache-sized batches pay off on a CPU; a GPU wants the whole batch at once.
    `image_shape` (C, H, W): fewer images per chunk above 32x32 pixels."""
    if device.type != "cpu":
        return 1 << 16
    pixels = 1 if image_shape is None else image_shape[-2] * image_shape[-1]
    return min(CPU_CHUNK, max(1, CPU_CHUNK_PIXELS // pixels))


def embed(net: Net, images: Tensor, chunk: int) -> Tensor:
    """``net.embed`` in batches of ``chunk`` (per-image results are the same as one batch:
    every layer of these networks treats images independently)."""
    if images.shape[0] <= chunk:
        return net.embed(images)
    return torch.cat([net.embed(part) for part in images.split(chunk)])


def _plain_layers(net: nn.Module) -> list[nn.Module] | None:
    """The layers of a ConvNet-style body (conv, group norm, ReLU, 2x2 average pool), or
    None for any other network."""
    if type(net) is not ConvNet or not isinstance(net.features, nn.Sequential):
        return None
    layers = list(net.features)
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.GroupNorm, nn.ReLU)):
            continue
        if (
            isinstance(m, nn.AvgPool2d)
            and m.kernel_size in (2, (2, 2))
            and m.stride in (2, (2, 2))
            and m.padding in (0, (0, 0))
            and not m.ceil_mode
        ):
            continue
        return None
    return layers


def embed_no_grad(net: Net, images: Tensor, chunk: int) -> Tensor:
    """``embed`` for a side that needs no gradient (call it under ``torch.inference_mode``).

    For ConvNet bodies it runs the same layers with an in-place ReLU and a faster 2x2
    pool (values equal to ``net.embed`` up to float rounding); other networks go through
    ``net.embed``."""
    layers = _plain_layers(net) if images.device.type == "cpu" else None
    if layers is None:
        return embed(net, images, chunk)
    outputs = []
    for part in images.split(chunk):
        h = part
        for m in layers:
            if isinstance(m, nn.ReLU):
                h = h.relu_()
            elif isinstance(m, nn.AvgPool2d):
                h = pool2(h)
            else:
                h = m(h)
        outputs.append(h.flatten(1))
    return torch.cat(outputs)
