"""A teacher file's header, read without torch: what the file says about its network.

A teacher file is a safetensors file whose metadata holds one JSON object under
:data:`METADATA_KEY`. ``habactl inspect`` and ``verify`` read that header (the first
bytes of the file only) to tell a teacher file from an archive, without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    arch: str  # the network built, e.g. "convnet-d3", "resnet18", "torchvision-resnet18"
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


def _metadata(data: bytes) -> dict[str, Any] | None:
    """The ``__metadata__`` of a safetensors file's bytes, or None."""
    if len(data) < 8:
        return None
    size = int.from_bytes(data[:8], "little")
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        return None
    try:
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__")
    except (ValueError, AttributeError):
        return None
    return metadata if isinstance(metadata, dict) else None


def header_json(data: bytes, path: Path | str) -> Any:
    """The teacher's JSON header, read from the safetensors metadata of `data` (the
    file's bytes, or at least its first 8 + header-size bytes)."""
    if len(data) < 8:
        raise TeacherError(f"{path}: not a teacher file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise TeacherError(f"{path}: not a habactl teacher file (no safetensors header)")
    metadata = _metadata(data) or {}
    if METADATA_KEY not in metadata and "haba" in metadata:
        raise TeacherError(f"{path}: a .haba archive, not a teacher file")
    try:
        return json.loads(metadata[METADATA_KEY])
    except (ValueError, KeyError, TypeError):
        raise TeacherError(f"{path}: not a habactl teacher file (no teacher header)") from None


def is_archive(data: bytes) -> bool:
    """Whether `data` (a file's first bytes at least) is a .haba archive's."""
    metadata = _metadata(data)
    return metadata is not None and "haba" in metadata


def peek_teacher(path: str | Path) -> TeacherInfo | None:
    """The header of `path` when it is a teacher file, else None (any other file, or
    one that cannot be read). Reads the header's bytes only; standard library only."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
            if len(head) < 8:
                return None
            size = int.from_bytes(head, "little")
            if size > MAX_HEADER_BYTES:
                return None
            data = head + file.read(size)
    except OSError:
        return None
    try:
        return TeacherInfo.from_json(header_json(data, path), str(path))
    except TeacherError:
        return None


def describe_info(info: TeacherInfo, file_bytes: int | None = None) -> str:
    """``convnet-d3, 10 classes, 1x28x28, trained on mnist-5k, 1,234,567 bytes``."""
    shape = "x".join(str(side) for side in info.image_shape)
    parts = [info.arch, f"{len(info.classes)} classes", shape]
    if info.dataset.get("name"):
        parts.append(f"trained on {info.dataset['name']}")
    if file_bytes is not None:
        parts.append(f"{file_bytes:,} bytes")
    return ", ".join(parts)


__all__ = [
    "KIND",
    "METADATA_KEY",
    "TeacherError",
    "TeacherInfo",
    "describe_info",
    "header_json",
    "peek_teacher",
]
