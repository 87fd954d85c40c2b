"""Recompute an archive's soft labels with a teacher (``habactl relabel``).

The new archive keeps the bases, the pipeline and every other field; its labels are
the teacher's probabilities (at a temperature) for each basis, stored in the form asked
for, and its provenance names the teacher (format 1.3, ``provenance.teacher``). Labels
are counted in the archive's bytes: the new total is compared with the budget the
archive records, and an archive over it is refused before the teacher runs, unless
``allow_over``.

Per basis: a basis that decodes to several images (a ``hallucinate`` stage) gets the
mean of the teacher's probabilities over its images, since the format stores one label
per basis and every image decoded from it takes that label.

Per crop (``crops=E``, format 1.4): besides the per-basis labels, E epochs of views of
every training image, each a random resized crop (and mirror, where the data allow it)
drawn from ``seed``, stored with the teacher's label for exactly that view — the labels
SRe2L-style students train on. They are counted like every other label byte: per view,
the label row in the form asked for, 8 bytes of crop box and 1 of mirror flag.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from habactl.errors import HabaError, quote
from habactl.format.account import storage_account
from habactl.format.labels import LabelForm, parse_form
from habactl.labels.forms import EncodedLabels, LabelsError, encode_soft_labels, labelled_manifest
from habactl.labels.teacher_space import input_map, to_teacher_space

if TYPE_CHECKING:
    from habactl.teacher import Teacher


@dataclass(frozen=True)
class LabelBudget:
    """An archive's bytes with its labels in a new form, against its recorded budget."""

    labels_bytes: int  # the new labels (every tensor of the form)
    images_bytes: int  # bases + hallucinators: what decodes to the images
    counted_bytes: int  # everything the account counts, with the new labels
    budget_bytes: int  # the budget the archive records
    budget_source: str  # where that budget comes from, for messages
    crop_views: int = 0  # stored per-crop views (epochs x training images), in labels_bytes

    @property
    def over(self) -> bool:
        return self.counted_bytes > self.budget_bytes

    @property
    def labels_to_images(self) -> float:
        return self.labels_bytes / max(1, self.images_bytes)

    def line(self) -> str:
        """One line for people: the new total against the budget."""
        return (
            f"{self.counted_bytes:,} bytes counted (labels {self.labels_bytes:,}, "
            f"{self.labels_to_images:.2f}x the images' {self.images_bytes:,}) of a budget of "
            f"{self.budget_bytes:,} ({self.budget_source}): "
            f"{self.counted_bytes / self.budget_bytes:.2f}x"
        )


@dataclass(frozen=True)
class RelabelResult:
    """What ``relabel`` wrote."""

    path: Path
    form: LabelForm
    temperature: float
    budget: LabelBudget
    labels: EncodedLabels
    crops: int = 0  # epochs of per-crop views stored (0: none)


# Per stored view besides its label row: the crop box (4 x float16) and the mirror flag.
VIEW_BYTES = 4 * 2 + 1


def label_budget(manifest: Mapping[str, Any], form: LabelForm, crop_views: int = 0) -> LabelBudget:
    """The bytes ``manifest``'s archive would count with soft labels in ``form`` (and
    ``crop_views`` per-crop views, each a label row in ``form``, a box and a flag).

    The budget is the one compress records: the byte budget it was given
    (``provenance.hyperparameters.budget.budget_bytes``) when there is one, else the
    manifest's ``storage.ipc`` float32 images per class."""
    account = storage_account(manifest)
    count, classes = int(manifest["bases"]["count"]), len(manifest["classes"])
    labels_bytes = (count + crop_views) * form.row_bytes(classes) + crop_views * VIEW_BYTES
    old = account.parts["labels"]
    counted = account.counted_bytes - (old.bytes if old.counted else 0) + labels_bytes
    recorded = manifest["provenance"]["hyperparameters"].get("budget")
    given = recorded.get("budget_bytes") if isinstance(recorded, Mapping) else None
    if isinstance(given, int) and not isinstance(given, bool) and given > 0:
        budget, source = given, "the byte budget it was compressed to"
    else:
        budget, source = account.budget_bytes, f"IPC {manifest['storage']['ipc']}"
    return LabelBudget(labels_bytes, account.images_bytes, counted, budget, source, crop_views)


def relabel(
    archive: str | os.PathLike[str],
    teacher: Teacher | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    form: str | LabelForm = "float32",
    temperature: float = 1.0,
    allow_over: bool = False,
    overwrite: bool = False,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    crops: int = 0,
    seed: int = 0,
) -> RelabelResult:
    """Write ``output``: ``archive`` with its labels recomputed by ``teacher`` (a Teacher or
    the path of a teacher file) at ``temperature`` and stored in ``form`` (``float32``,
    ``float16``, ``uint8`` or ``top-k:K``). ``crops`` > 0 also stores that many epochs
    of per-crop views and their labels, drawn from ``seed`` (format 1.4).

    Checked before the teacher runs: the output location, the form, the teacher against
    the archive (classes, image shape, input normalisation) and the budget (a
    ``LabelsError`` when the new total is over it, unless ``allow_over``)."""
    from habactl.format import open_archive
    from habactl.runtime.atomic import check_file_target

    source, target = Path(archive), Path(output)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)) or not (
        temperature > 0
    ):
        raise LabelsError(f"--temperature must be a positive number, got {quote(temperature)}")
    if batch_size < 1:
        raise LabelsError("the batch size must be at least 1")
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 0:
        raise LabelsError(f"--crops must be a whole number of epochs (0: none), got {crops!r}")
    check_file_target(target, overwrite, example="relabelled.haba")
    label_form = _parse(form)
    with open_archive(source) as opened:
        manifest = dict(opened.manifest)  # the writer fields go in labelled_manifest
        crop_views = crops * opened.layout.expanded_items  # epochs x training images
        tensors = {
            name: t
            for name, t in opened.tensors().items()
            if name != "labels" and not name.startswith("labels.")
        }
    classes = len(manifest["classes"])
    if label_form.k is not None and label_form.k > classes:
        raise LabelsError(f"top-k: k is {label_form.k}, but the archive has {classes} classes")
    budget = label_budget(manifest, label_form, crop_views)
    if budget.over and not allow_over:
        raise LabelsError(
            f"{target.name} would be over its budget: {budget.line()}; pass --allow-over to "
            "write it anyway, or store the labels smaller (--labels uint8 or top-k:K"
            + (", or fewer --crops epochs)" if crops else ")")
        )
    model = _teacher(teacher, device)
    inputs = input_map(manifest, model)
    probabilities = _per_basis(source, model, inputs, temperature, batch_size)
    encoded = encode_soft_labels(probabilities, label_form)
    if crops:
        from habactl.labels.crops import label_views

        flip = _recipe_flip(manifest)
        views = label_views(source, model, inputs, temperature, label_form, crops, seed, flip)
        encoded = encoded.with_crops(views, crops)
    name = model.path.name if model.path is not None else "teacher"
    new = labelled_manifest(
        manifest,
        encoded,
        teacher={
            "name": name,
            "sha256": model.sha256,
            "arch": model.arch,
            "temperature": float(temperature),
        },
    )
    from habactl.distill.archive import created_timestamp

    new["provenance"]["created"] = created_timestamp()
    new["training"] = _with_kd_recipe(new["training"])
    from habactl.format import save_archive

    save_archive(target, {**tensors, **encoded.tensors}, new, overwrite=overwrite)
    return RelabelResult(target, label_form, float(temperature), budget, encoded, crops)


def _recipe_flip(manifest: Mapping[str, Any]) -> bool:
    """Whether the archive's training may mirror its images (not for digits)."""
    from habactl.training.recipe import Recipe

    return Recipe.from_manifest(manifest).flip


def _with_kd_recipe(training: Mapping[str, Any]) -> dict[str, Any]:
    """Soft labels from a teacher train with the knowledge-distillation recipe, against
    the stored labels: the archive records it, without a teacher to run at training time
    (an online-distillation recipe's teacher is replaced by its stored outputs)."""
    from habactl.evaluation.protocol import KD

    arch = training["recommended"]["arch"]
    return {**training, "recommended": KD.recommended(arch=arch)}


def _parse(form: str | LabelForm) -> LabelForm:
    try:
        return parse_form(form)
    except HabaError as error:
        raise LabelsError(str(error)) from None


def _teacher(teacher: Any, device: str | torch.device | None) -> Teacher:
    from habactl.teacher import Teacher, load_teacher

    if isinstance(teacher, Teacher):
        return teacher
    return load_teacher(teacher, device=None if device in (None, "auto") else device)


def _per_basis(
    path: Path,
    teacher: Teacher,
    inputs: tuple[Tensor, Tensor] | None,
    temperature: float,
    batch_size: int,
) -> Tensor:
    """(count, classes): the teacher's probabilities for every decoded image, averaged
    over the images of each basis."""
    from habactl.training.dataset import HabaDataset

    dataset = HabaDataset(path, cache=False)
    expansion, count = dataset.expansion, dataset.num_bases
    parts = []
    for start in range(0, len(dataset), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(dataset)))
        images, _ = dataset.fetch(indices)
        images = to_teacher_space(images, teacher, inputs)
        parts.append(teacher.probabilities(images, temperature=temperature).float().cpu())
    probs = torch.cat(parts).view(count, expansion, -1)  # item b*E + v
    return probs.mean(dim=1)


__all__ = ["LabelBudget", "RelabelResult", "label_budget", "relabel"]
