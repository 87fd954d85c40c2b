"""A teacher network on disk: one safetensors file holding its state dict, and a JSON
header (metadata key ``habactl.teacher``) saying which network it is, which classes it
tells apart, the input space its images are in and the data it was trained on.

A teacher is what the teacher-driven objectives (recovery from batch-norm statistics,
selection by confidence) and relabelling read; an archive whose training recipe needs
the teacher counts :attr:`Teacher.file_bytes`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from habactl.errors import HabaError

KIND = "habactl-teacher"
VERSION = 1
METADATA_KEY = "habactl.teacher"
# A teacher header is a few KB; a larger one is not ours (and is not parsed).
MAX_HEADER_BYTES = 1 << 20


class TeacherError(HabaError):
    """A teacher file that cannot be used (one line, for the CLI)."""


@dataclass(frozen=True)
class TeacherInfo:
    """What a teacher file says about its network (its JSON header)."""

    arch: str  # the network built, e.g. "convnet-d3" or "resnet18"
    width: float
    norm: str  # "batch" for every teacher habactl trains
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (channels, height, width)
    normalization: dict[str, Any]  # the input space: habactl's mean-std of the data
    dataset: dict[str, Any]  # {"name", "fingerprint"}
    training: dict[str, Any]  # settings and accuracies, for people (not read back)

    def to_json(self) -> dict[str, Any]:
        channels, height, width = self.image_shape
        return {
            "kind": KIND,
            "version": VERSION,
            "arch": {"name": self.arch, "width": float(self.width), "norm": self.norm},
            "classes": list(self.classes),
            "image": {"channels": channels, "height": height, "width": width},
            "normalization": dict(self.normalization),
            "dataset": dict(self.dataset),
            "training": dict(self.training),
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> TeacherInfo:
        """Parse a header; TeacherError naming `where` for anything malformed."""
        try:
            if value.get("kind") != KIND:
                raise TeacherError(f"{where}: not a habactl teacher file")
            if value.get("version") != VERSION:
                raise TeacherError(
                    f"{where}: teacher file version {value.get('version')!r}; "
                    f"this habactl reads version {VERSION}"
                )
            arch, image = value["arch"], value["image"]
            shape = (int(image["channels"]), int(image["height"]), int(image["width"]))
            classes = tuple(str(name) for name in value["classes"])
            info = cls(
                arch=str(arch["name"]),
                width=float(arch["width"]),
                norm=str(arch["norm"]),
                classes=classes,
                image_shape=shape,
                normalization=dict(value["normalization"]),
                dataset=dict(value["dataset"]),
                training=dict(value.get("training", {})),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise TeacherError(f"{where}: malformed teacher header ({error!r})") from None
        if len(classes) < 2 or min(shape) < 1:
            raise TeacherError(f"{where}: a teacher needs 2 or more classes and an image size")
        return info


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
    """Read a teacher file written by :func:`save_teacher`: the network rebuilt, its
    weights loaded (every tensor must match), frozen, in eval mode, on `device`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TeacherError(f"{path}: no such teacher file") from None
    except OSError as error:
        raise TeacherError(f"{path}: cannot read ({error.strerror or error})") from None
    info = TeacherInfo.from_json(_header(data, path), str(path))
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
    if any(not bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point()):
        raise TeacherError(f"{path}: the teacher's weights hold NaN or infinite values")
    net.requires_grad_(False)
    net.eval()
    if device is not None:
        net.to(torch.device(device))
    return Teacher(net, info, len(data), hashlib.sha256(data).hexdigest(), path)


def _header(data: bytes, path: Path) -> Any:
    """The teacher's JSON header, read from the safetensors metadata."""
    import json

    if len(data) < 8:
        raise TeacherError(f"{path}: not a teacher file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise TeacherError(f"{path}: not a habactl teacher file (no safetensors header)")
    try:
        header = json.loads(data[8 : 8 + size])
        text = header["__metadata__"][METADATA_KEY]
        return json.loads(text)
    except (ValueError, KeyError, TypeError):
        raise TeacherError(f"{path}: not a habactl teacher file (no teacher header)") from None


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
    a note (else None) when it was trained on other data with the same classes."""
    where = teacher.path.name if teacher.path is not None else "the teacher"
    if tuple(source.classes) != teacher.classes:
        raise TeacherError(
            f"{where} knows {len(teacher.classes)} classes "
            f"({', '.join(teacher.classes[:3])}, ...); the data has {len(source.classes)} "
            f"({', '.join(list(source.classes)[:3])}, ...)"
        )
    shape = (source.channels, source.height, source.width)
    if shape != teacher.image_shape:
        raise TeacherError(
            f"{where} takes images of {_shape(teacher.image_shape)}; the data's are {_shape(shape)}"
        )
    if teacher.dataset.get("fingerprint") != getattr(source, "fingerprint", None):
        return f"{where} was trained on other data ({teacher.dataset.get('name', '?')})"
    return None


def _shape(shape: tuple[int, int, int]) -> str:
    return "{}x{}x{}".format(*shape)


__all__ = [
    "KIND",
    "METADATA_KEY",
    "Teacher",
    "TeacherError",
    "TeacherInfo",
    "check_teacher_for",
    "load_teacher",
    "save_teacher",
]
