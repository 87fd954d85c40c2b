"""Checkpoints: everything a run needs to go on exactly where it stopped.

A checkpoint holds the stored tensors, the optimiser states, the objective's and the
contrastive extractor's state, and every RNG state, plus a fingerprint of the run's
settings so that ``--resume`` refuses a checkpoint made with other ones. It is written
atomically (temporary file in the same folder, fsync, rename): a run killed at any
moment leaves either the previous checkpoint or the new one, never a torn file.
It is a torch.save file read back with ``weights_only=True`` (no pickled code runs).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from habactl.distill.errors import DistillError

KIND = "habactl-distill-checkpoint"
VERSION = 1


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_path(output: Path) -> Path:
    return output.with_name(output.name + ".ckpt")


def save(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` atomically to ``path`` (through runtime.atomic, like every output)."""
    import io

    from habactl.runtime.atomic import write_bytes

    path = Path(path)
    payload = {"kind": KIND, "version": VERSION, **state}
    # Serialised in memory first: torch's own file writer reports a full disk as an
    # internal assertion; the atomic writer says "no space left on device" and the folder.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getbuffer())


def load(path: Path, fingerprint: str) -> dict[str, Any]:
    """Read a checkpoint and check it belongs to a run with these settings."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"no checkpoint to resume at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DistillError(f"checkpoint {path} cannot be read ({reason[:200]})") from None
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise DistillError(f"{path} is not a habactl distillation checkpoint")
    if state.get("version") != VERSION:
        raise DistillError(
            f"checkpoint {path} has version {state.get('version')}, "
            f"this habactl reads version {VERSION}"
        )
    if state.get("fingerprint") != fingerprint:
        raise DistillError(
            f"checkpoint {path} was made with other settings (data, seed, codec, "
            f"hyperparameters or --threads); rerun with the same options, or without --resume "
            f"and with --force to start over"
        )
    return state


def remove(path: Path) -> None:
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass
