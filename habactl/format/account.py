"""The storage account: values and bytes per part against the claimed IPC budget.

The budget is IPC float32 images per class: ``ipc x classes x C x H x W`` values, four
bytes each. The ratio is given in values and in bytes; they differ once a part is stored
at another precision (a ``quantize`` stage), and the bytes are what the budget means.

Derived from the manifest's ``tensors`` table only, so it cannot disagree with the
file. It is honest by construction: every stored synthetic value is counted, whatever
the archive claims (docs/method.md, "Counting the budget": the reference code stores
1.91x its budget). The budget formula itself lives here and nowhere else; the manifest
check, the archive builder and the planner all call ``budget_values``. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from habactl.format.errors import ArchiveError, quote

PARTS = ("bases", "hallucinators", "labels", "normalization")

# Bytes per element of every dtype safetensors can declare (the reader refuses others).
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}


FLOAT32_BYTES = 4  # --ipc N means N float32 images per class


def budget_bytes_for(ipc: int, classes: int, image_shape: Sequence[int]) -> int:
    """The budget in bytes: ``ipc`` float32 images per class."""
    return FLOAT32_BYTES * budget_values(ipc, classes, image_shape)


def budget_values(ipc: int, classes: int, image_shape: Sequence[int]) -> int:
    """The budget in stored values: the size of ``ipc`` real images per class,
    ``ipc x classes x C x H x W``."""
    return int(ipc) * int(classes) * math.prod(int(s) for s in image_shape)


def _part(name: str) -> str:
    if name == "bases":
        return "bases"
    if name.startswith("pipeline."):
        return "hallucinators"
    if name == "labels" or name.startswith("labels."):  # 1.3 forms: scales, indices
        return "labels"
    if name.startswith("normalization."):
        return "normalization"
    raise ArchiveError(f"tensor {quote(name)}: belongs to no part of the account")


@dataclass(frozen=True)
class Part:
    """One part of the account: its values and bytes, and whether the budget counts it."""

    values: int
    bytes: int
    counted: bool


@dataclass(frozen=True)
class StorageAccount:
    """What an archive stores against its claimed budget, in values and in bytes; the
    fields are ``inspect --json``'s account, key for key."""

    parts: dict[str, Part]  # bases, hallucinators, labels, normalization
    stored_values: int  # the counted parts' values
    stored_bytes: int  # every tensor's bytes, counted or not
    budget_values: int
    ratio: float  # stored_values / budget_values
    counts: str  # what the claim counts: "all" stored values, or "bases" only
    claim_values: int
    claim_ratio: float
    # The same in bytes (the unit that matters once parts are not float32): the budget
    # is IPC float32 images per class.
    counted_bytes: int
    budget_bytes: int
    ratio_bytes: float
    claim_bytes: int
    claim_ratio_bytes: float
    note: str | None = None  # why the claim and the account differ (counts "bases")

    @property
    def images_bytes(self) -> int:
        """The bytes of what decodes to the training images: bases and hallucinators."""
        return self.parts["bases"].bytes + self.parts["hallucinators"].bytes

    @property
    def labels_to_images(self) -> float:
        """The labels' bytes over the images' (bases + hallucinators) bytes."""
        return self.parts["labels"].bytes / max(1, self.images_bytes)

    def to_json(self) -> dict[str, Any]:
        """The account as ``inspect --json`` shows it (no note when there is none)."""
        account = asdict(self)
        if self.note is None:
            del account["note"]
        return account


def storage_account(manifest: Mapping[str, Any]) -> StorageAccount:
    """Values and bytes per part, the counted total, and its ratio to the budget.

    ``manifest`` is a validated manifest's JSON (an archive's ``manifest``). Counted:
    bases, hallucinators (every ``pipeline.*`` tensor) and soft labels. Not counted:
    hard labels (class-sorted, so they carry nothing beyond ``bases.per_class``; their
    bytes are shown) and normalisation (it describes the real data, not the synthetic
    set).
    """
    soft = manifest["labels"]["kind"] == "soft"
    counted = {"bases": True, "hallucinators": True, "labels": soft, "normalization": False}
    values = dict.fromkeys(PARTS, 0)
    nbytes = dict.fromkeys(PARTS, 0)
    for name, entry in manifest["tensors"].items():
        part = _part(name)
        count = math.prod(entry["shape"])
        values[part] += count
        nbytes[part] += count * DTYPE_SIZES[entry["dtype"]]
    parts = {p: Part(values[p], nbytes[p], counted[p]) for p in PARTS}
    image = manifest["image"]
    budget = budget_values(
        manifest["storage"]["ipc"],
        len(manifest["classes"]),
        (image["channels"], image["height"], image["width"]),
    )
    stored = sum(p.values for p in parts.values() if p.counted)
    counted_bytes = sum(p.bytes for p in parts.values() if p.counted)
    counts = manifest["storage"]["counts"]
    note = None
    if counts == "bases":
        note = (
            "the claim counts bases only (as the reference code does): hallucinators"
            + (" and soft labels" if soft else "")
            + " are not counted against it"
        )
    claim = parts["bases"].values if counts == "bases" else stored
    claim_b = parts["bases"].bytes if counts == "bases" else counted_bytes
    budget_b = FLOAT32_BYTES * budget
    return StorageAccount(
        parts=parts,
        stored_values=stored,
        stored_bytes=sum(p.bytes for p in parts.values()),
        budget_values=budget,
        ratio=stored / budget,
        counts=counts,
        claim_values=claim,
        claim_ratio=claim / budget,
        counted_bytes=counted_bytes,
        budget_bytes=budget_b,
        ratio_bytes=counted_bytes / budget_b,
        claim_bytes=claim_b,
        claim_ratio_bytes=claim_b / budget_b,
        note=note,
    )
