"""A torchvision ResNet state dict as a teacher (``torch.save(model.state_dict())``, or
the same tensors in a safetensors file).

Such a file holds weights only: no classes, no input size, no normalisation. The
teacher takes them from the data it is used with (:func:`bind`, which
``check_teacher_for`` and ``bind_teacher`` call): the data's classes in their order
(their count must be the network's outputs), its image shape (3 channels, sides of 32
pixels or more: a ResNet halves its input five times) and the data's normalisation.

A torch file is read with ``torch.load(..., weights_only=True)``: tensors and plain
containers only, so a file that would run code when unpickled is refused, never run.
Nothing is downloaded: the network is built without weights and the file's are loaded
into it, every tensor matching.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from habactl.teacher.header import TeacherError, TeacherInfo

PREFIX = "torchvision-"
# Blocks in layer1..layer4 and the block kind -> torchvision's constructor.
RESNETS = {
    ((2, 2, 2, 2), "basic"): "resnet18",
    ((3, 4, 6, 3), "basic"): "resnet34",
    ((3, 4, 6, 3), "bottleneck"): "resnet50",
    ((3, 4, 23, 3), "bottleneck"): "resnet101",
    ((3, 8, 36, 3), "bottleneck"): "resnet152",
}
MIN_SIDE = 32  # five halvings (stride-2 stem, max pool, layer2..4) down to one pixel
_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.")
# The containers checkpoints wrap a state dict in ({"state_dict": ...}, {"model": ...}).
_WRAPPERS = ("state_dict", "model")


def is_state_dict_teacher(info: TeacherInfo) -> bool:
    """Whether `info` is a state dict's: it takes its classes and input space from the data."""
    return info.arch.startswith(PREFIX)


def looks_like_torch_file(data: bytes) -> bool:
    """A ``torch.save`` file: a zip archive (torch >= 1.6) or a legacy pickle stream."""
    return data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"


def looks_like_safetensors(data: bytes) -> bool:
    """An 8-byte header length that fits the file, then a JSON object."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    return 0 < size <= len(data) - 8 and data[8:9] == b"{"


def read_tensors(data: bytes, path: Path) -> dict[str, Tensor] | None:
    """The tensors of a plain safetensors file or a torch file; None when `data` is
    neither. A torch file with anything but tensors in plain containers is refused."""
    if looks_like_safetensors(data):
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return dict(load(data))
        except (SafetensorError, ValueError, RuntimeError):
            return None
    if not looks_like_torch_file(data):
        return None
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # whatever the unpickler meets, the file is refused
        raise TeacherError(f"{path}: refused: {_refusal(error)}") from None
    return _flat(loaded, path)


def _refusal(error: Exception) -> str:
    """One line for a torch file that weights_only loading refused."""
    text = str(error)
    if "weights only load failed" in text.lower():
        detail = next(
            (
                line.strip().rstrip(".")
                for line in text.splitlines()
                if "GLOBAL" in line or "nsupported" in line
            ),
            "objects other than tensors",
        )
        return f"it holds more than tensors and is never unpickled ({detail})"
    first = " ".join(text.split())[:200] or type(error).__name__
    return f"not a readable torch file ({first})"


def _flat(loaded: Any, path: Path) -> dict[str, Tensor]:
    """A state dict out of what torch.load gave: unwrapped, "module." prefixes gone."""
    for key in _WRAPPERS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not loaded:
        raise TeacherError(f"{path}: not a state dict (a torch file of {type(loaded).__name__})")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise TeacherError(f"{path}: not a state dict (values other than named tensors)")
    tensors = dict(loaded)
    if all(name.startswith("module.") for name in tensors):  # saved from DataParallel / DDP
        tensors = {name[len("module.") :]: t for name, t in tensors.items()}
    return tensors


def resnet_of(tensors: Mapping[str, Tensor]) -> str | None:
    """torchvision's name of the ResNet whose state dict `tensors` is (its key layout:
    conv1, bn1, layer1..layer4, fc), or None."""
    if not {"conv1.weight", "bn1.weight", "fc.weight", "fc.bias"} <= set(tensors):
        return None
    blocks = [0, 0, 0, 0]
    for name in tensors:
        found = _BLOCK.match(name)
        if found:
            layer, block = int(found.group(1)) - 1, int(found.group(2))
            blocks[layer] = max(blocks[layer], block + 1)
    kind = "bottleneck" if "layer1.0.conv3.weight" in tensors else "basic"
    return RESNETS.get((tuple(blocks), kind))  # type: ignore[arg-type]


def state_dict_teacher_net(tensors: dict[str, Tensor], path: Path) -> tuple[nn.Module, str, int]:
    """(the network with the file's weights, its torchvision name, its outputs)."""
    import torchvision

    name = resnet_of(tensors)
    if name is None:
        raise TeacherError(
            f"{path}: not a habactl teacher file (no teacher header) nor a torchvision "
            f"ResNet state dict (conv1, bn1, layer1..4, fc)"
        )
    fc = tensors["fc.weight"]
    if fc.dim() != 2 or fc.shape[0] < 2:
        raise TeacherError(f"{path}: fc.weight of shape {tuple(fc.shape)} is no classifier")
    classes = int(fc.shape[0])
    with torch.random.fork_rng(devices=[]):  # the weights are loaded right after
        net = getattr(torchvision.models, name)(weights=None, num_classes=classes)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else "?"
        raise TeacherError(f"{path}: weights do not fit {PREFIX}{name} ({detail})") from None
    return net, name, classes


def unbound_info(name: str, classes: int, path: Path) -> TeacherInfo:
    """The info of a state dict before it meets its data: placeholder class names and
    torchvision's own input space (3x224x224, its ImageNet mean and std)."""
    return TeacherInfo(
        arch=f"{PREFIX}{name}",
        width=1.0,
        norm="batch",
        classes=tuple(str(k) for k in range(classes)),
        image_shape=(3, 224, 224),
        normalization={
            "kind": "mean-std",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        dataset={"name": f"unknown (state dict {path.name})", "fingerprint": None},
        training={
            "source": "torchvision state dict",
            "input space": "taken from the data it is used with",
        },
    )


def bind(
    info: TeacherInfo,
    classes: Sequence[str],
    image_shape: Sequence[int],
    normalization: Mapping[str, Any],
    where: str,
) -> TeacherInfo:
    """`info` with the data's classes, image shape and normalisation; TeacherError when
    the data cannot go through the network."""
    names = tuple(str(name) for name in classes)
    if len(names) != len(info.classes):
        raise TeacherError(
            f"{where} is a {info.arch} state dict with {len(info.classes)} outputs; the data "
            f"has {len(names)} classes"
        )
    channels, height, width = (int(side) for side in image_shape)
    if channels != 3 or min(height, width) < MIN_SIDE:
        raise TeacherError(
            f"{where} is a {info.arch} state dict: it takes RGB images of at least "
            f"{MIN_SIDE}x{MIN_SIDE} pixels; the data's are {channels}x{height}x{width}"
        )
    return replace(
        info,
        classes=names,
        image_shape=(channels, height, width),
        normalization=dict(normalization),
    )


__all__ = [
    "bind",
    "is_state_dict_teacher",
    "read_tensors",
    "resnet_of",
    "state_dict_teacher_net",
    "unbound_info",
]
