"""The teacher's input space for an archive's images (``relabel``, per basis and per crop).

An archive's images live in its own normalised space; a teacher takes images normalised
its own way. ``input_map`` checks that a teacher can label an archive (classes, image
shape, no ZCA) and gives the per-channel (scale, shift) from one space to the other;
``to_teacher_space`` applies it on the teacher's device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from habactl.labels.forms import LabelsError

if TYPE_CHECKING:
    from habactl.teacher import Teacher


def input_map(manifest: Mapping[str, Any], teacher: Teacher) -> tuple[Tensor, Tensor] | None:
    """(scale, shift) per channel taking the archive's normalised space to the teacher's
    input space (None when they are the same); refuses what cannot be mapped."""
    from habactl.teacher import bind_teacher

    where = teacher.path.name if teacher.path is not None else "the teacher"
    classes = tuple(manifest["classes"])
    image = manifest["image"]
    shape = (image["channels"], image["height"], image["width"])
    # A torchvision state dict names no classes or input space: it takes the archive's.
    bind_teacher(
        teacher, classes=classes, image_shape=shape, normalization=manifest["normalization"]
    )
    if classes != tuple(teacher.classes):
        raise LabelsError(
            f"{where} knows {len(teacher.classes)} classes; the archive has {len(classes)} "
            f"({', '.join(classes[:3])}, ...)"
            if len(classes) != len(teacher.classes)
            else f"{where} names its classes differently from the archive "
            f"({', '.join(teacher.classes[:3])}, ... vs {', '.join(classes[:3])}, ...)"
        )
    if shape != tuple(teacher.image_shape):
        raise LabelsError(
            f"{where} takes images of {'x'.join(map(str, teacher.image_shape))}; the "
            f"archive's are {'x'.join(map(str, shape))}"
        )
    ours, theirs = manifest["normalization"], teacher.normalization
    if ours.get("kind") == "zca":
        raise LabelsError(
            "the archive's images are ZCA-whitened; a teacher takes mean-std inputs, so "
            "it cannot label them"
        )
    mean_a, std_a = _stats(ours, shape[0])
    mean_t, std_t = _stats(theirs, shape[0])
    if torch.equal(mean_a, mean_t) and torch.equal(std_a, std_t):
        return None
    # pixels = x * std_a + mean_a; the teacher's input = (pixels - mean_t) / std_t
    return std_a / std_t, (mean_a - mean_t) / std_t


def _stats(normalization: Mapping[str, Any], channels: int) -> tuple[Tensor, Tensor]:
    if normalization.get("kind", "none") == "none":
        return torch.zeros(channels), torch.ones(channels)
    mean = torch.tensor([float(v) for v in normalization["mean"]], dtype=torch.float32)
    std = torch.tensor([float(v) for v in normalization["std"]], dtype=torch.float32)
    return mean, std


def to_teacher_space(
    images: Tensor, teacher: Teacher, inputs: tuple[Tensor, Tensor] | None
) -> Tensor:
    """Archive images on the teacher's device and in its input space (``inputs`` from
    ``input_map``: per-channel scale and shift, None when the spaces agree)."""
    images = images.to(teacher.device)
    if inputs is None:
        return images
    scale, shift = (t.to(teacher.device).view(1, -1, 1, 1) for t in inputs)
    return images * scale + shift


__all__ = ["input_map", "to_teacher_space"]
