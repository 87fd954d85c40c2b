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
    if name == "labels":
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
    """What an archive stores against its claimed budget, in values and in bytes."""

    parts: dict[str, Part]  # bases, hallucinators, labels, normalization
    stored_values: int  # the counted parts' values
    stored_bytes: int  # every tensor's bytes, counted or not
    budget_values: int
    counts: str  # what the claim counts: "all" stored values, or "bases" only
    claim_values: int
    # The same in bytes (the unit that matters once parts are not float32): the budget
    # is IPC float32 images per class.
    counted_bytes: int
    budget_bytes: int
    claim_bytes: int
    note: str | None = None  # why the claim and the account differ (counts "bases")

    @property
    def ratio(self) -> float:
        return self.stored_values / self.budget_values

    @property
    def claim_ratio(self) -> float:
        return self.claim_values / self.budget_values

    @property
    def ratio_bytes(self) -> float:
        return self.counted_bytes / self.budget_bytes

    @property
    def claim_ratio_bytes(self) -> float:
        return self.claim_bytes / self.budget_bytes

    def to_json(self) -> dict[str, Any]:
        """The account as ``inspect --json`` shows it."""
        account: dict[str, Any] = {
            "parts": {name: asdict(part) for name, part in self.parts.items()},
            "stored_values": self.stored_values,
            "stored_bytes": self.stored_bytes,
            "budget_values": self.budget_values,
            "ratio": self.ratio,
            "counts": self.counts,
            "claim_values": self.claim_values,
            "claim_ratio": self.claim_ratio,
            "counted_bytes": self.counted_bytes,
            "budget_bytes": self.budget_bytes,
            "ratio_bytes": self.ratio_bytes,
            "claim_bytes": self.claim_bytes,
            "claim_ratio_bytes": self.claim_ratio_bytes,
        }
        if self.note is not None:
            account["note"] = self.note
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
    return StorageAccount(
        parts=parts,
        stored_values=stored,
        stored_bytes=sum(p.bytes for p in parts.values()),
        budget_values=budget,
        counts=counts,
        claim_values=parts["bases"].values if counts == "bases" else stored,
        counted_bytes=counted_bytes,
        budget_bytes=FLOAT32_BYTES * budget,
        claim_bytes=parts["bases"].bytes if counts == "bases" else counted_bytes,
        note=note,
    )
