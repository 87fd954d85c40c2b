"""The experts buffer: a folder of expert trajectories for trajectory matching (MTT).

Layout::

    buffer/
      index.json                  settings, data set, architecture, finished experts
      expert-0000.safetensors     one tensor "trajectory": (epochs + 1, parameters) float32,
      expert-0001.safetensors     row e = the flat parameters after epoch e (row 0: init)

No pickles: trajectories are safetensors, the index is JSON. Each file is written
beside its target and renamed into place, and an expert counts only once the index
lists it with its sha256, so a run killed at any moment leaves a buffer whose listed
experts are all complete; ``habactl experts`` on the same folder resumes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from habactl.errors import HabaError
from habactl.experts.index import ExpertEntry, ExpertsIndex
from habactl.runtime.atomic import (
    OutputError,
    check_folder_writable,
    reason_of,
    write_bytes,
    write_text,
)

KIND = "habactl-experts"
VERSION = 1
INDEX = "index.json"
TENSOR = "trajectory"
# Index fields that must agree for a folder to be resumed or used: everything but the
# list of finished experts and the library that wrote it.
SETTINGS_KEYS = ("dataset", "normalization", "arch", "parameters", "training")


class ExpertsError(HabaError):
    """An experts buffer that is missing, damaged or made for something else."""


def expert_file(i: int) -> str:
    return f"expert-{i:04d}.safetensors"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def write_json_atomic(path: Path, value: Mapping[str, Any]) -> None:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_text(path, text)


def write_trajectory(path: Path, trajectory: Tensor, metadata: Mapping[str, str]) -> str:
    """Write one trajectory atomically; returns its sha256."""
    from safetensors.torch import save

    # Serialised in memory, so that the one atomic writer does the writing and a full
    # disk is a clear error (safetensors' own file writer reports it in its own words).
    data = save(
        {TENSOR: trajectory.detach().float().cpu().contiguous()},
        # One key: safetensors writes a metadata map in no fixed order, and the
        # same expert must give the same bytes.
        metadata={KIND: json.dumps(dict(metadata), sort_keys=True)},
    )
    write_bytes(path, data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_buffer_target(folder: str | os.PathLike[str]) -> None:
    """Every check on a buffer folder to train into, before any data is read: the one
    place they are made (``train_experts`` makes them; ``habactl experts`` makes them
    before it loads the data and then calls ``fill_buffer``)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder; give a folder for the buffer")
    if not folder.parent.is_dir():
        raise OutputError(f"cannot write {folder}: folder {folder.parent} does not exist")
    check_buffer_folder(folder)  # never writes into a folder of someone's files
    check_folder_writable(folder if folder.is_dir() else folder.parent)


def check_buffer_folder(folder: str | os.PathLike[str]) -> None:
    """Refuse to train into a folder that is neither new, empty nor an experts buffer.

    A buffer folder holds only ``index.json``, ``expert-NNNN.safetensors`` and the
    hidden temporary files of an interrupted write; anything else means the folder is
    someone's, and habactl never writes into it (not even with --force).
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ExpertsError(f"{folder} exists and is not a folder")
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        raise OutputError(f"cannot read folder {folder}: {reason_of(error)}") from None
    foreign = [n for n in names if not _buffer_file(n)]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        shown = ", ".join(foreign[:3]) + more
        raise ExpertsError(
            f"{folder} is not an experts buffer and is not empty ({shown}); "
            f"give a new or empty folder"
        )


def _buffer_file(name: str) -> bool:
    if name == INDEX or (name.startswith(".") and ".tmp-" in name):
        return True
    stem, _, suffix = name.partition(".")
    return suffix == "safetensors" and stem.startswith("expert-") and stem[7:].isdigit()


def read_index(folder: Path) -> ExpertsIndex:
    """The index of the buffer in `folder`, checked and typed (ExpertsError if it cannot
    be read, is not an experts index, or is of another version)."""
    path = Path(folder) / INDEX
    make = f"make one with: habactl experts DATA -o {folder}"
    if not Path(folder).is_dir():
        raise ExpertsError(f"experts buffer {folder}: no such folder ({make})")
    if not path.is_file():
        raise ExpertsError(f"experts buffer {folder}: no {INDEX} ({make})")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = " ".join(str(error).split())
        raise ExpertsError(f"experts buffer {folder}: {INDEX} cannot be read ({reason})") from None
    if not isinstance(index, dict) or index.get("kind") != KIND:
        raise ExpertsError(f"experts buffer {folder}: {INDEX} is not a habactl experts index")
    if index.get("version") != VERSION:
        raise ExpertsError(
            f"experts buffer {folder}: index version {index.get('version')!r}, "
            f"this habactl reads version {VERSION}"
        )
    missing = [k for k in (*SETTINGS_KEYS, "experts") if k not in index]
    if missing:
        raise ExpertsError(f"experts buffer {folder}: {INDEX} lacks {', '.join(missing)}")
    try:
        return ExpertsIndex.from_json(index)
    except (KeyError, TypeError, ValueError) as error:
        what = f"no field {error}" if isinstance(error, KeyError) else str(error)
        raise ExpertsError(f"experts buffer {folder}: {INDEX} is damaged ({what})") from None


def settings_of(index: Mapping[str, Any]) -> dict[str, Any]:
    return {k: index[k] for k in SETTINGS_KEYS}


def differing(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields where two settings records differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += differing(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


class ExpertBuffer:
    """A finished (or partly finished) buffer, opened for trajectory matching."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.experts: tuple[ExpertEntry, ...] = self.index.experts
        if not self.experts:
            raise ExpertsError(
                f"experts buffer {self.folder}: no finished expert yet; "
                f"run habactl experts to train some"
            )
        self.epochs = self.index.training.epochs
        self.parameter_count = self.index.parameters.count
        self._verified: set[str] = set()
        self.digest = "sha256:" + hashlib.sha256((self.folder / INDEX).read_bytes()).hexdigest()

    def __len__(self) -> int:
        return len(self.experts)

    def check_source(
        self, name: str, fingerprint: str, image_shape: tuple[int, int, int], num_classes: int
    ) -> None:
        """Refuse a buffer trained on other data (compared by content fingerprint)."""
        data = self.index.dataset
        if data.fingerprint != fingerprint:
            raise ExpertsError(
                f"experts buffer {self.folder} was trained on {data.name!r} "
                f"({data.fingerprint[:19]}…), not on this data set "
                f"{name!r} ({fingerprint[:19]}…); train experts on it with "
                f"habactl experts"
            )
        if data.image != tuple(image_shape) or len(data.classes) != num_classes:
            raise ExpertsError(
                f"experts buffer {self.folder}: images {data.image} with "
                f"{len(data.classes)} classes, the data set has "
                f"{tuple(image_shape)} with {num_classes}"
            )

    def check_layout(self, layout: list[list[Any]]) -> None:
        """Refuse a buffer whose parameters are not the network's (architecture, width)."""
        if self.index.parameters.layout != layout:
            arch = self.index.arch
            raise ExpertsError(
                f"experts buffer {self.folder}: its trajectories are of "
                f"{arch.name} width {arch.width}, whose parameters "
                f"differ from the student network's"
            )

    def trajectory_rows(self, expert: int, rows: list[int]) -> Tensor:
        """Rows (epochs) of one expert's trajectory: (len(rows), parameters)."""
        from safetensors import safe_open

        entry = self.experts[expert]
        path = self.folder / entry.file
        where = f"experts buffer {self.folder}: {entry.file}"
        if not path.is_file():
            raise ExpertsError(f"{where} is missing; rerun habactl experts on this folder")
        if entry.file not in self._verified:
            if sha256_file(path) != entry.sha256:
                raise ExpertsError(
                    f"{where} is corrupt (sha256 differs from the index); delete it "
                    f"and rerun habactl experts on this folder"
                )
            self._verified.add(entry.file)
        try:
            with safe_open(str(path), framework="pt") as handle:
                part = handle.get_slice(TENSOR)
                shape = tuple(part.get_shape())
                if shape != (self.epochs + 1, self.parameter_count):
                    raise ExpertsError(
                        f"{where}: trajectory of shape {shape}, expected "
                        f"{(self.epochs + 1, self.parameter_count)}"
                    )
                return torch.stack([part[r] for r in rows]).float()
        except ExpertsError:
            raise
        except Exception as error:  # safetensors raises its own types for damaged files
            reason = " ".join(str(error).split())[:200]
            raise ExpertsError(f"{where} cannot be read ({reason})") from None
