"""The storage forms of soft labels (format/SPEC.md §2.1, format 1.3), torch-free.

A soft label is a (classes,) row of non-negative values per basis. Format 1.0-1.2
store the rows as they are (``labels`` F32); format 1.3 adds three smaller forms, named
by ``labels.form``:

- ``float16``: ``labels`` F16 (count, classes), the rows rounded to binary16;
- ``uint8``:   ``labels`` U8 (count, classes) codes and ``labels.scale`` F32 (count,),
  one scale per row (the row's largest value / 255): value = code × scale;
- ``top-k``:   ``labels`` F16 (count, k), each row's k largest values, and
  ``labels.indices`` (count, k), their classes, in the smallest unsigned integer that
  holds ``classes - 1`` (U8, U16 or U32). The rest of the row's mass, 1 − (sum of the
  k values), is spread evenly over the other ``classes - k`` classes.

Every form decodes to (count, classes) float32 (``decode_labels``), which is what the
loader and evaluation train on.

Format 1.4 adds per-crop labels (``labels.crops``, SPEC §2.2): for each of ``epochs``
epochs, one augmented view of every training item (a crop box and a mirror flag) and the
teacher's label for that view, in the same form as the per-basis labels. Their tensors
are the form's tensors under ``labels.crops`` (``labels.crops``, ``labels.crops.scale``,
``labels.crops.indices``) plus ``labels.crops.box`` F16 (rows, 4) and
``labels.crops.mirror`` U8 (rows,), rows = epochs × items, epoch-major.

What is checked here runs on the header (the tensors a form implies) and on each
tensor's values (the rules), without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from habactl.format.errors import ArchiveError, quote

FLOAT32 = "float32"
FORMS = (FLOAT32, "float16", "top-k", "uint8")
# The forms a 1.3 manifest names in labels.form (float32 is the form without the field).
NAMED_FORMS = FORMS[1:]
# The format minor version that added labels.form and provenance.teacher.
LABELS_MINOR = 3
# The format minor version that added per-crop labels (labels.crops).
CROPS_MINOR = 4
CROPS = "labels.crops"
# A stored box may reach past the image's edge by this much (binary16 rounding of the
# box's centre and size, each rounded on its own).
BOX_SLACK = 2.0**-10

ValueRule = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class LabelForm:
    """How soft labels are stored: ``name`` one of FORMS, ``k`` for ``top-k``."""

    name: str = FLOAT32
    k: int | None = None

    def entry(self) -> dict[str, Any]:
        """The manifest's ``labels`` object for soft labels in this form."""
        if self.name == FLOAT32:
            return {"kind": "soft"}  # as format 1.0-1.2 wrote it: no form field
        entry: dict[str, Any] = {"kind": "soft", "form": self.name}
        if self.k is not None:
            entry["k"] = self.k
        return entry

    @property
    def minor(self) -> int:
        """The lowest format minor version that holds this form (float32: any)."""
        return 0 if self.name == FLOAT32 else LABELS_MINOR

    def row_bytes(self, classes: int) -> int:
        """The bytes one label row takes in this form (what a planner charges per basis):
        4·C (float32), 2·C (float16), C + 4 (uint8), k·(2 + index bytes) (top-k)."""
        if self.name == FLOAT32:
            return 4 * classes
        if self.name == "float16":
            return 2 * classes
        if self.name == "uint8":
            return classes + 4
        return int(self.k or 0) * (2 + _INDEX_BYTES[index_dtype(classes)])

    def describe(self) -> str:
        return f"top-k (k={self.k})" if self.name == "top-k" else self.name

    def __str__(self) -> str:
        return f"top-k:{self.k}" if self.name == "top-k" else self.name


def parse_form(text: Any) -> LabelForm:
    """``float32``, ``float16``, ``uint8`` or ``top-k:K`` (K ≥ 1) as a LabelForm;
    an ArchiveError naming the choices otherwise. K is checked against the classes
    when the labels are encoded."""
    if isinstance(text, LabelForm):
        return text
    if isinstance(text, str) and text in (FLOAT32, "float16", "uint8"):
        return LabelForm(text)
    if isinstance(text, str) and text.startswith("top-k:"):
        k = text.removeprefix("top-k:")
        if k.isdigit() and int(k) >= 1 and len(k) <= 9:
            return LabelForm("top-k", int(k))
    raise ArchiveError(
        f"labels form {quote(text)} is not one of float32, float16, uint8, top-k:K (K >= 1)"
    )


def form_of(labels: Mapping[str, Any]) -> LabelForm | None:
    """The form of a validated manifest's ``labels`` entry; None for hard labels."""
    if labels.get("kind") != "soft":
        return None
    name = labels.get("form", FLOAT32)
    return LabelForm(str(name), labels.get("k") if name == "top-k" else None)


_INDEX_BYTES = {"U8": 1, "U16": 2, "U32": 4}


def index_dtype(classes: int) -> str:
    """The smallest unsigned integer dtype that holds every class index."""
    if classes <= 2**8:
        return "U8"
    if classes <= 2**16:
        return "U16"
    return "U32"


def label_tensors(
    labels: Mapping[str, Any], count: int, classes: int
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors a validated ``labels`` entry implies: name -> (dtype, shape)."""
    form = form_of(labels)
    if form is None:
        return {"labels": ("I64", (count,))}
    if form.name == FLOAT32:
        return {"labels": ("F32", (count, classes))}
    if form.name == "float16":
        return {"labels": ("F16", (count, classes))}
    if form.name == "uint8":
        return {"labels": ("U8", (count, classes)), "labels.scale": ("F32", (count,))}
    k = int(form.k or 0)
    return {"labels": ("F16", (count, k)), "labels.indices": (index_dtype(classes), (count, k))}


def label_rules(labels: Mapping[str, Any], classes: int) -> dict[str, ValueRule]:
    """Content rules of a form's extra tensors (``labels`` itself has SPEC §2's: finite,
    non-negative), by tensor name."""
    form = form_of(labels)
    if form is None:
        return {}
    if form.name == "uint8":
        return {"labels.scale": _non_negative("scales")}
    if form.name == "top-k":
        return {"labels.indices": lambda a: _indices_problem(a, classes)}
    return {}


def crop_epochs(labels: Mapping[str, Any]) -> int | None:
    """The epochs of per-crop labels a validated ``labels`` entry stores (1.4), or None."""
    crops = labels.get("crops")
    return int(crops["epochs"]) if isinstance(crops, Mapping) else None


def crop_tensors(
    labels: Mapping[str, Any], items: int, classes: int
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The per-crop tensors a validated ``labels`` entry implies (none without crops):
    the labels' form under ``labels.crops``, and each view's box and mirror flag."""
    epochs = crop_epochs(labels)
    if epochs is None:
        return {}
    rows = epochs * items
    out = {crop_name(name): spec for name, spec in label_tensors(labels, rows, classes).items()}
    out[CROPS + ".box"] = ("F16", (rows, 4))
    out[CROPS + ".mirror"] = ("U8", (rows,))
    return out


def crop_rules(labels: Mapping[str, Any], classes: int) -> dict[str, ValueRule]:
    """Content rules of the per-crop tensors (none without crops)."""
    if crop_epochs(labels) is None:
        return {}
    rules = {crop_name(name): rule for name, rule in label_rules(labels, classes).items()}
    rules[CROPS] = _non_negative("soft label values")
    rules[CROPS + ".box"] = _box_problem
    rules[CROPS + ".mirror"] = _flag_problem
    return rules


def decode_crop_labels(arrays: Mapping[str, Any], labels: Mapping[str, Any], classes: int) -> Any:
    """The per-crop labels as (rows, classes) float32, from the stored tensors (numpy
    arrays, keyed by their names in the archive); SPEC §2.1's arithmetic per row."""
    renamed = {
        "labels" + name.removeprefix(CROPS): array
        for name, array in arrays.items()
        if name == CROPS or (name.startswith(CROPS + ".") and name.count(".") == 2)
    }
    return decode_labels(renamed, labels, classes)


def crop_name(name: str) -> str:
    """A per-basis label tensor's per-crop counterpart: labels.scale -> labels.crops.scale."""
    return CROPS + name.removeprefix("labels")


def _box_problem(array: Any) -> str | None:
    """Each box (centre x, centre y, width, height) has sides in (0, 1] of the image's and
    lies inside it: |centre| + side <= 1 (with BOX_SLACK for binary16 rounding)."""
    import numpy as np

    if array.size == 0:
        return None
    box = array.astype(np.float64)
    side = box[:, 2:]
    bad = np.flatnonzero(((side <= 0) | (side > 1)).any(axis=1))
    if bad.size:
        return f"box {int(bad[0])} has a side outside (0, 1]: {box[bad[0]].tolist()}"
    bad = np.flatnonzero((np.abs(box[:, :2]) + side > 1 + BOX_SLACK).any(axis=1))
    if bad.size:
        return f"box {int(bad[0])} reaches outside the image: {box[bad[0]].tolist()}"
    return None


def _flag_problem(array: Any) -> str | None:
    bad = int((array > 1).sum())
    return f"{bad} mirror flags are neither 0 nor 1" if bad else None


def _non_negative(what: str) -> ValueRule:
    def rule(array: Any) -> str | None:
        negative = int((array < 0).sum())
        return f"{negative} {what} are negative" if negative else None

    return rule


def _indices_problem(array: Any, classes: int) -> str | None:
    """Every index names a class, and no row names one twice (a decode would have to
    pick which of two values the class gets)."""
    import numpy as np

    if array.size == 0:
        return None
    wide = array.astype(np.int64)
    bad = np.argwhere(wide >= classes)
    if bad.size:
        row, column = (int(i) for i in bad[0])
        return (
            f"class index {int(wide[row, column])} at [{row}, {column}] is out of range "
            f"(0 to {classes - 1})"
        )
    ordered = np.sort(wide, axis=1)
    repeated = np.argwhere(ordered[:, 1:] == ordered[:, :-1])
    if repeated.size:
        row, column = (int(i) for i in repeated[0])
        return f"row {row} names class {int(ordered[row, column])} twice"
    return None


def decode_labels(arrays: Mapping[str, Any], labels: Mapping[str, Any], classes: int) -> Any:
    """The labels as training uses them, from the stored tensors (numpy arrays): hard
    labels as they are (int64), soft labels of any form as (count, classes) float32.

    The arithmetic is SPEC §2.1's, in float32."""
    import numpy as np

    form = form_of(labels)
    stored = np.asarray(arrays["labels"])
    if form is None:
        return stored.astype(np.int64, copy=False)
    if form.name in (FLOAT32, "float16"):
        return stored.astype(np.float32)  # binary16 -> binary32 is exact
    if form.name == "uint8":
        scale = np.asarray(arrays["labels.scale"], dtype=np.float32)
        return stored.astype(np.float32) * scale[:, None]
    values = stored.astype(np.float32)
    indices = np.asarray(arrays["labels.indices"]).astype(np.int64)
    count, k = values.shape
    out = np.zeros((count, classes), dtype=np.float32)
    if k < classes:
        rest = np.maximum(np.float32(0), np.float32(1) - values.sum(axis=1, dtype=np.float32))
        out += (rest / np.float32(classes - k))[:, None]
    np.put_along_axis(out, indices, values, axis=1)
    return out


def check_labels_entry(value: Any, classes: int) -> str | None:
    """The problem with a ``labels`` object's form fields (1.3) as ``path: message``, or
    None; ``kind`` and unknown keys are the manifest checker's."""
    kind = value.get("kind")
    form = value.get("form")
    if "crops" in value:
        problem = _crops_problem(value, kind)
        if problem:
            return problem
    if form is None:
        if "k" in value:
            return "labels.k: only a top-k form has k"
        return None
    if kind != "soft":
        return "labels.form: only soft labels have a form"
    if form not in NAMED_FORMS:
        return f"labels.form: {quote(form)} is not one of {', '.join(NAMED_FORMS)}"
    if form != "top-k":
        if "k" in value:
            return "labels.k: only a top-k form has k"
        return None
    if "k" not in value:
        return "labels.k: missing (a top-k form needs it)"
    k = value["k"]
    if isinstance(k, bool) or not isinstance(k, int):
        return f"labels.k: must be an integer, got {quote(k)}"
    if not 1 <= k <= classes:
        return f"labels.k: {k} is out of range (1 to {classes}, the classes)"
    return None


def _crops_problem(value: Mapping[str, Any], kind: Any) -> str | None:
    if kind != "soft":
        return "labels.crops: only soft labels have per-crop labels"
    crops = value["crops"]
    if not isinstance(crops, Mapping):
        return f"labels.crops: must be an object, got {quote(crops)}"
    unknown = sorted(set(crops) - {"epochs"})
    if unknown:
        return f"labels.crops: unknown field {quote(unknown[0])}"
    epochs = crops.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        return f"labels.crops.epochs: must be an integer, got {quote(epochs)}"
    if epochs < 1:
        return f"labels.crops.epochs: must be at least 1, got {epochs}"
    return None


def required_minor(manifest: Mapping[str, Any]) -> int:
    """The lowest format minor version the labels fields of ``manifest`` need: 4 for
    per-crop labels, 3 for a labels form or a recorded teacher, else 0."""
    labels = manifest.get("labels")
    provenance = manifest.get("provenance")
    if isinstance(labels, Mapping) and "crops" in labels:
        return CROPS_MINOR
    if isinstance(labels, Mapping) and ("form" in labels or "k" in labels):
        return LABELS_MINOR
    if isinstance(provenance, Mapping) and "teacher" in provenance:
        return LABELS_MINOR
    return 0


__all__ = [
    "BOX_SLACK",
    "CROPS",
    "CROPS_MINOR",
    "crop_epochs",
    "crop_name",
    "crop_rules",
    "crop_tensors",
    "decode_crop_labels",
    "FLOAT32",
    "FORMS",
    "LABELS_MINOR",
    "LabelForm",
    "check_labels_entry",
    "decode_labels",
    "form_of",
    "index_dtype",
    "label_rules",
    "label_tensors",
    "parse_form",
    "required_minor",
]
