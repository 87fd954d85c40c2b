"""Per-crop soft labels (format 1.4): the teacher's label for each stored view.

``label_views`` draws E epochs of random resized crops of every training image an
archive decodes to (the knowledge-distillation recipe's crop, habactl.training.views),
runs the teacher on each view, and stores the probabilities in the archive's label form
next to the views' boxes and mirror flags, under ``labels.crops`` (format/SPEC.md §2.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from habactl.format.labels import CROPS, LabelForm, crop_name
from habactl.labels.forms import encode_soft_labels
from habactl.labels.teacher_space import to_teacher_space

if TYPE_CHECKING:
    from habactl.teacher import Teacher


def label_views(
    path: Path,
    teacher: Teacher,
    inputs: tuple[Tensor, Tensor] | None,
    temperature: float,
    form: LabelForm,
    epochs: int,
    seed: int,
    flip: bool,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """The ``labels.crops*`` tensors of ``epochs`` epochs of views of ``path``'s training
    images: boxes, flags and the teacher's probabilities at ``temperature`` in ``form``.

    ``inputs`` maps the archive's normalised space to the teacher's (None: the same)."""
    from habactl.evaluation.protocol import KD
    from habactl.training.dataset import HabaDataset
    from habactl.training.views import CropViews, draw_views

    images, _ = HabaDataset(path, cache=False).tensors()
    items = images.shape[0]
    generator = torch.Generator().manual_seed(seed)
    box, mirror = draw_views(items, epochs, generator, scale=KD.crop_scale, flip=flip)
    classes = len(teacher.classes)
    views = CropViews.from_arrays(box.float(), mirror, torch.zeros(box.shape[0], 0), items)
    probabilities = torch.empty(epochs, items, classes)
    for epoch in range(epochs):
        for start in range(0, items, batch_size):
            index = torch.arange(start, min(items, start + batch_size))
            batch = to_teacher_space(views.apply(images[index], epoch, index), teacher, inputs)
            probs = teacher.probabilities(batch, temperature=temperature)
            probabilities[epoch, index] = probs.float().cpu()
    encoded = encode_soft_labels(probabilities.reshape(epochs * items, classes), form)
    tensors = {crop_name(name): t for name, t in encoded.tensors.items()}
    tensors[CROPS + ".box"] = box
    tensors[CROPS + ".mirror"] = mirror
    return tensors


__all__ = ["label_views"]
