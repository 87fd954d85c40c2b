"""Encoding soft labels in a storage form (format/SPEC.md §2.1): the writer's side.

``encode_soft_labels(probs, form)`` turns (count, classes) non-negative rows into the
tensors of a form and the manifest's ``labels`` entry; ``habactl.format.labels.
decode_labels`` (the reader's side) turns them back into float32 rows. Anything that
writes soft labels (``habactl relabel``, an objective at compress time) calls this.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from habactl.errors import HabaError
from habactl.format.labels import CROPS_MINOR, FLOAT32, LabelForm, index_dtype, parse_form
from habactl.format.manifest import WRITER_FIELDS

# Rows a top-k form stores must be probability vectors: the decode gives the rest of a
# row's mass, 1 - (the k values), to the other classes.
ROW_SUM_TOLERANCE = 1e-3
FLOAT16_MAX = 65504.0

_INDEX_DTYPES = {"U8": torch.uint8, "U16": torch.uint16, "U32": torch.uint32}


class LabelsError(HabaError):
    """Soft labels that the chosen form cannot store."""


@dataclass(frozen=True)
class EncodedLabels:
    """Soft labels in one storage form: the tensors to store (``labels`` and, for some
    forms, ``labels.scale`` or ``labels.indices``), the manifest's ``labels`` entry, and
    the lowest format minor version that holds them (0 for float32, 3 otherwise)."""

    form: LabelForm
    tensors: dict[str, Tensor]
    entry: dict[str, Any]
    minor: int

    @property
    def nbytes(self) -> int:
        """The bytes the labels take in the archive (every tensor of the form)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def with_crops(self, crops: Mapping[str, Tensor], epochs: int) -> EncodedLabels:
        """These labels with ``epochs`` epochs of per-crop views (the ``labels.crops*``
        tensors of habactl.labels.crops.label_views): format 1.4."""
        entry = {**self.entry, "crops": {"epochs": int(epochs)}}
        return EncodedLabels(self.form, {**self.tensors, **crops}, entry, CROPS_MINOR)


def encode_soft_labels(probs: Tensor, form: str | LabelForm) -> EncodedLabels:
    """Store ``probs`` ((count, classes), finite, non-negative) in ``form``: ``"float32"``,
    ``"float16"``, ``"uint8"`` or ``"top-k:K"`` (or a LabelForm).

    top-k needs probability rows (each summing to 1 within 1e-3); the other forms take any
    non-negative rows (learned labels need not sum to 1). Deterministic: the same input
    gives the same tensors. Errors are one-line ``LabelsError``s."""
    form = _form(form)
    if not isinstance(probs, Tensor) or probs.dim() != 2 or probs.shape[1] < 1:
        shape = list(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise LabelsError(f"soft labels must be a (count, classes) tensor, got {shape}")
    rows = probs.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(rows).all()):
        raise LabelsError("soft labels hold NaN or infinite values")
    if bool((rows < 0).any()):
        raise LabelsError("soft labels hold negative values")
    count, classes = rows.shape
    if form.name == FLOAT32:
        tensors = {"labels": rows.clone()}
    elif form.name == "float16":
        if bool((rows > FLOAT16_MAX).any()):
            raise LabelsError(
                f"soft labels above {FLOAT16_MAX:g} do not fit float16: use float32 or uint8"
            )
        tensors = {"labels": rows.half()}
    elif form.name == "uint8":
        tensors = _uint8(rows)
    else:
        tensors = _top_k(rows, int(form.k or 0), classes)
    return EncodedLabels(form, tensors, form.entry(), form.minor)


def labelled_manifest(
    manifest: Mapping[str, Any],
    encoded: EncodedLabels,
    *,
    teacher: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of ``manifest`` (without its writer fields) whose labels are ``encoded``'s,
    with ``provenance.teacher`` set when ``teacher`` ({name, sha256, arch, temperature})
    is given. ``format_version`` is left to the writer: 1.2, or 1.3 for a 1.3 form or a
    recorded teacher."""
    m = {k: copy.deepcopy(v) for k, v in manifest.items() if k not in WRITER_FIELDS}
    m.pop("format_version", None)
    m["labels"] = dict(encoded.entry)
    m["provenance"] = dict(m["provenance"])
    if teacher is not None:
        m["provenance"]["teacher"] = dict(teacher)
    return m


def _form(form: str | LabelForm) -> LabelForm:
    try:
        return parse_form(form)
    except HabaError as error:
        raise LabelsError(str(error)) from None


def _uint8(rows: Tensor) -> dict[str, Tensor]:
    # One scale per row, the row's largest value / 255: the largest value is code 255,
    # and a row of small values keeps its resolution. A zero row has scale 0, codes 0.
    scale = rows.amax(dim=1) / 255.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(rows / safe[:, None]).clamp_(0, 255)
    return {"labels": codes.to(torch.uint8), "labels.scale": scale.contiguous()}


def _top_k(rows: Tensor, k: int, classes: int) -> dict[str, Tensor]:
    if not 1 <= k <= classes:
        raise LabelsError(
            f"top-k: k is {k}, but the labels have {classes} classes (1 to {classes})"
        )
    sums = rows.sum(dim=1, dtype=torch.float64)
    off = (sums - 1).abs() > ROW_SUM_TOLERANCE
    if bool(off.any()):
        row = int(off.nonzero()[0, 0])
        raise LabelsError(
            f"top-k stores probability rows (each summing to 1), but row {row} sums to "
            f"{float(sums[row]):.4g}: use float16 or uint8 for these labels"
        )
    # A stable sort: equal values keep their class order, so the choice is deterministic.
    order = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :k]
    values = torch.gather(rows, 1, order).half()
    return {
        "labels": values.contiguous(),
        "labels.indices": order.to(_INDEX_DTYPES[index_dtype(classes)]).contiguous(),
    }


__all__ = ["EncodedLabels", "LabelsError", "encode_soft_labels", "labelled_manifest"]
