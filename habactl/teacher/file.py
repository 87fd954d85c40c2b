"""A teacher network on disk: one safetensors file holding its state dict, and a JSON
header (metadata key ``habactl.teacher``) saying which network it is, which classes it
tells apart, the input space its images are in and the data it was trained on.

A teacher is what the teacher-driven objectives (recovery from batch-norm statistics,
selection by confidence) and relabelling read; an archive whose training recipe needs
the teacher counts :attr:`Teacher.file_bytes`. The header is read without torch by
:mod:`habactl.teacher.header`; a torchvision ResNet state dict is a teacher too
(:mod:`habactl.teacher.statedict`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from habactl.errors import HabaError
from habactl.teacher.header import (
    KIND,
    METADATA_KEY,
    TeacherError,
    TeacherInfo,
    header_json,
    is_archive,
)


@dataclass(frozen=True)
class Teacher:
    """A trained network, frozen and in eval mode, with what its file says about it.

    Its parameters take no gradient, but its inputs may: recovery optimises images
    through it. ``logits`` therefore does not switch autograd off.
    """

    net: nn.Module
    info: TeacherInfo
    file_bytes: int  # the file's size: what an archive that needs the teacher counts
    sha256: str
    path: Path | None = None

    @property
    def arch(self) -> str:
        return self.info.arch

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    @property
    def normalization(self) -> dict[str, Any]:
        return self.info.normalization

    @property
    def dataset(self) -> dict[str, Any]:
        return self.info.dataset

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def logits(self, images: Tensor) -> Tensor:
        """(N, classes) logits of images already in the teacher's input space."""
        return self.net(images)

    def probabilities(self, images: Tensor, temperature: float = 1.0) -> Tensor:
        """softmax(logits / temperature), without a graph (labels, not a loss)."""
        with torch.no_grad():
            return (self.logits(images) / temperature).softmax(dim=1)

    def describe(self) -> dict[str, Any]:
        """What an archive records about the teacher it was made or labelled with."""
        return {
            "arch": self.arch,
            "sha256": self.sha256,
            "bytes": self.file_bytes,
            "dataset": dict(self.dataset),
            **({"file": self.path.name} if self.path is not None else {}),
        }


def save_teacher(path: str | Path, net: nn.Module, info: TeacherInfo) -> str:
    """Write `net`'s state dict and `info` to `path` atomically; its SHA-256."""
    from safetensors.torch import save

    from habactl.format.manifest import canonical_json
    from habactl.runtime.atomic import write_bytes

    tensors = {name: t.detach().to("cpu").contiguous() for name, t in net.state_dict().items()}
    data = save(tensors, metadata={METADATA_KEY: canonical_json(info.to_json())})
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_teacher(path: str | Path, *, device: torch.device | str | None = None) -> Teacher:
    """Read a teacher file: the network rebuilt, its weights loaded (every tensor must
    match), frozen, in eval mode, on `device`.

    A teacher file is what :func:`save_teacher` writes. A torchvision ResNet state dict
    (``torch.save(model.state_dict())``, read with ``weights_only=True``, or the same
    tensors as safetensors) is a teacher too: it takes the classes and normalisation of
    the data :func:`check_teacher_for` checks it against (docs/teacher.md)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TeacherError(f"{path}: no such teacher file") from None
    except IsADirectoryError:
        raise TeacherError(f"{path}: is a folder, not a teacher file") from None
    except OSError as error:
        raise TeacherError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        header = header_json(data, path)
    except TeacherError as not_ours:
        if is_archive(data):  # not worth trying as a state dict
            raise
        net, info, tensors = _state_dict_network(data, path, not_ours)
    else:
        info = TeacherInfo.from_json(header, str(path))
        net, tensors = _teacher_network(data, info, path)
    if any(not bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point()):
        raise TeacherError(f"{path}: the teacher's weights hold NaN or infinite values")
    net.requires_grad_(False)
    net.eval()
    if device is not None:
        net.to(torch.device(device))
    return Teacher(net, info, len(data), hashlib.sha256(data).hexdigest(), path)


def _teacher_network(
    data: bytes, info: TeacherInfo, path: Path
) -> tuple[nn.Module, dict[str, Tensor]]:
    """The network a teacher file's header names, with the file's weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise TeacherError(f"{path}: damaged teacher file ({error})") from None
    net = _built(info, path)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip() if str(error).strip() else "?"
        raise TeacherError(f"{path}: weights do not fit {info.arch} ({first})") from None
    return net, tensors


def _state_dict_network(
    data: bytes, path: Path, not_ours: TeacherError
) -> tuple[nn.Module, TeacherInfo, dict[str, Tensor]]:
    """A file without a teacher header: a torchvision state dict, or `not_ours`."""
    from habactl.teacher import statedict

    tensors = statedict.read_tensors(data, path)
    if tensors is None:
        raise not_ours
    net, name, classes = statedict.state_dict_teacher_net(tensors, path)
    return net, statedict.unbound_info(name, classes, path), tensors


def _built(info: TeacherInfo, path: Path) -> nn.Module:
    from habactl.nets.registry import build_net

    try:
        with torch.random.fork_rng(devices=[]):  # the weights are loaded right after
            return build_net(
                info.arch,
                *info.image_shape,
                len(info.classes),
                width_mult=info.width,
                norm=info.norm,
            )
    except HabaError as error:
        raise TeacherError(f"{path}: {error}") from None


def check_teacher_for(teacher: Teacher, source: Any) -> str | None:
    """TeacherError when `teacher` cannot label `source` (other classes or image size);
    a note (else None) when it was trained on other data with the same classes.

    A torchvision state dict, which names no classes and no input space, takes those of
    `source` here: its classes (as many as the network's outputs), its image shape (RGB,
    sides of 32 pixels or more) and habactl's normalisation of that data."""
    from habactl.format.normalization import mean_std

    where = teacher.path.name if teacher.path is not None else "the teacher"
    shape = (source.channels, source.height, source.width)
    normalization = mean_std(source.mean(), source.std()) if _takes_data(teacher) else {}
    note = bind_teacher(
        teacher, classes=source.classes, image_shape=shape, normalization=normalization
    )
    if note is not None:
        return note
    if tuple(source.classes) != teacher.classes:
        raise TeacherError(
            f"{where} knows {len(teacher.classes)} classes "
            f"({', '.join(teacher.classes[:3])}, ...); the data has {len(source.classes)} "
            f"({', '.join(list(source.classes)[:3])}, ...)"
        )
    if shape != teacher.image_shape:
        raise TeacherError(
            f"{where} takes images of {_shape(teacher.image_shape)}; the data's are {_shape(shape)}"
        )
    if teacher.dataset.get("fingerprint") != getattr(source, "fingerprint", None):
        return f"{where} was trained on other data ({teacher.dataset.get('name', '?')})"
    return None


def bind_teacher(
    teacher: Teacher,
    *,
    classes: Sequence[str],
    image_shape: Sequence[int],
    normalization: Mapping[str, Any],
) -> str | None:
    """Give a torchvision state dict, which names no classes and no input space, those of
    the data it is used with (an archive's manifest, say): a note saying so, or
    TeacherError when the data cannot go through it. Any other teacher is left as it is
    (None): its own classes and space are what the caller compares."""
    if not _takes_data(teacher):
        return None
    from habactl.teacher import statedict

    where = teacher.path.name if teacher.path is not None else "the teacher"
    bound = statedict.bind(teacher.info, classes, image_shape, normalization, where)
    # Teacher is frozen for its users; taking the data's space is the one change it takes.
    object.__setattr__(teacher, "info", bound)
    return (
        f"{where} is a {teacher.arch} state dict: it reads the data's "
        f"{len(teacher.classes)} classes in their order, in the data's normalisation"
    )


def _takes_data(teacher: Teacher) -> bool:
    from habactl.teacher import statedict

    return statedict.is_state_dict_teacher(teacher.info)


def _shape(shape: tuple[int, int, int]) -> str:
    return "{}x{}x{}".format(*shape)


__all__ = [
    "KIND",
    "METADATA_KEY",
    "Teacher",
    "TeacherError",
    "TeacherInfo",
    "bind_teacher",
    "check_teacher_for",
    "load_teacher",
    "save_teacher",
]
