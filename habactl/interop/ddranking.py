"""DD-Ranking's input: an expanded class-major image tensor, labels and a learning rate.

DD-Ranking's evaluators take ``image_tensor``, ``soft_labels`` / hard labels and
``syn_lr`` (loaded with ``torch.load``), and an ``ipc`` that sizes its random-real-image
baseline. An archive whose decoded set is larger than its storage (hallucinators,
multi-formation) must be compared with the random images its *storage* could hold, not
its claimed IPC: ``habactl-export.json`` gives that storage-equivalent IPC.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from habactl.evaluation.run import budget_per_class
from habactl.format.view import Manifest


def storage_note(manifest: Manifest) -> dict:
    """The numbers to give DD-Ranking, from the archive's true storage account."""
    from habactl.format import storage_account

    account = storage_account(manifest.json)
    per_image = math.prod(manifest.image.shape)
    classes = len(manifest.classes)
    equivalent = account.stored_values / (classes * per_image)
    return {
        "claimed_ipc": manifest.storage.ipc,
        "storage_equivalent_ipc": round(equivalent, 4),
        # A fair random baseline gets at most the same storage: round down (at least 1).
        "ipc_for_random_baseline": budget_per_class(manifest),
        "stored_values": account.stored_values,
        "decoded_images": None,
        "classes": list(manifest.classes),
        "normalization": manifest.normalization.to_json(),
        "note": (
            "images.pt is in the archive's normalised space; give DD-Ranking "
            "ipc_for_random_baseline as ipc so that its random baseline uses the same "
            "storage as this archive"
        ),
    }


def export(archive: Path, folder: Path, *, force: bool = False) -> list[str]:
    """images.pt, labels.pt, lr.pt and habactl-export.json."""
    from habactl.interop.build import expanded, write_folder

    images, labels, dataset = expanded(archive)
    note = storage_note(dataset.info)
    note["decoded_images"] = int(images.shape[0])
    files: dict[str, torch.Tensor | str] = {
        "images.pt": images,
        "labels.pt": labels,
        "lr.pt": torch.tensor(float(dataset.recommended_lr)),
        "habactl-export.json": json.dumps(note, indent=2, sort_keys=True) + "\n",
    }
    return write_folder(folder, files, force=force)
