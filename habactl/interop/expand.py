"""Expanding an archive to ordinary files: the one code path behind ``habactl expand``
(and ``habactl export --to imagefolder``).

Three outputs: a folder of class folders of PNGs (an ImageFolder, as torchvision reads
it), an HDF5 file or a ``.npz`` file. Every output is written atomically through
:mod:`habactl.runtime.atomic`: a full or read-only disk leaves the target as it was.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from habactl.runtime.atomic import (
    OutputError,
    atomic_folder,
    check_file_target,
    check_folder_target,
    write_bytes,
    write_new_file,
)

FORMATS = ("png", "h5", "npz")


@dataclass(frozen=True)
class ExpandResult:
    """What :func:`expand_archive` wrote."""

    path: Path
    format: str
    images: int


def output_format(target: str | os.PathLike[str]) -> str:
    """``png`` for a folder (no suffix), ``h5`` for .h5/.hdf5, ``npz`` for .npz."""
    suffix = Path(target).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix == ".npz":
        return "npz"
    if suffix == "" or Path(target).name in ("", ".", ".."):
        return "png"
    raise OutputError(f"cannot tell the output format of {target}: use a folder, .h5/.hdf5 or .npz")


def check_output(target: str | os.PathLike[str], force: bool, kind: str | None = None) -> str:
    """Every check that can be made before decoding; returns the format."""
    kind = kind or output_format(target)
    if kind not in FORMATS:
        raise OutputError(f"unknown output format {kind!r} (known: {', '.join(FORMATS)})")
    if kind == "png":
        check_folder_target(Path(target), force)
    else:
        check_file_target(Path(target), force, example=f"images.{kind}")
    return kind


def expand_archive(
    archive: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    pixels: bool = False,
    force: bool = False,
    kind: str | None = None,
) -> ExpandResult:
    """Decode every (basis, hallucinator) pair of ``archive`` and write them to ``output``.

    ``kind`` is ``png``, ``h5`` or ``npz`` (default: from the output's name). PNGs are
    always [0, 1] pixels; h5/npz store the normalised training values unless ``pixels``.
    An existing output is replaced only with ``force``, and a folder only if it is empty
    or habactl wrote it.
    """
    from habactl.training.dataset import HabaDataset

    output = Path(output)
    kind = check_output(output, force, kind)
    dataset = HabaDataset(archive)
    images, labels = dataset.tensors()
    transform = dataset.test_transform()
    classes = dataset.classes
    source = Path(archive).name
    if kind == "png":
        write_image_folder(
            output, transform.to_pixels(images), labels, classes, details={"source_archive": source}
        )
    else:
        values = transform.to_pixels(images) if pixels else images
        meta = json.dumps(
            {
                "classes": classes,
                "space": "pixels" if pixels else "normalised",
                "normalization": dataset.info.normalization.to_json(),
                "source_archive": source,
            },
            sort_keys=True,
        )
        data = (
            h5_bytes(values.numpy(), labels.numpy(), meta)
            if kind == "h5"
            else npz_bytes(values.numpy(), labels.numpy(), classes, meta)
        )
        write_bytes(output, data, overwrite=force)
    return ExpandResult(output, kind, int(labels.shape[0]))


def safe_folder_name(name: str, index: int) -> str:
    """``007_name``: sorted like the class order, and safe on every file system."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return f"{index:03d}_{cleaned}" if cleaned else f"{index:03d}"


def write_image_folder(
    target: str | os.PathLike[str],
    pixels: Any,
    labels: Any,
    classes: list[str],
    *,
    details: dict | None = None,
) -> int:
    """Write ``pixels`` ((N, C, H, W) in [0, 1]) as ``target/NNN_class/NNNNNN.png``.

    Hard labels (N,) or soft labels (N, classes), whose argmax is the folder. Call
    :func:`check_output` (or :func:`habactl.runtime.atomic.check_folder_target`) first. Returns
    the number of images written.
    """
    import torch
    from PIL import Image

    values = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    hard = labels if labels.dim() == 1 else labels.argmax(dim=1)
    counters: dict[int, int] = {}
    with atomic_folder(target, kind="expand", details=details) as temp:
        folders = {c: temp / safe_folder_name(name, c) for c, name in enumerate(classes)}
        for folder in folders.values():
            folder.mkdir()
        for image, label in zip(values, hard.tolist()):
            index = counters.get(label, 0)
            counters[label] = index + 1
            array = image.permute(1, 2, 0).numpy()
            picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            write_new_file(folders[label] / f"{index:06d}.png", buffer.getbuffer())
    return int(values.shape[0])


def h5_bytes(images: Any, labels: Any, meta: str) -> bytes:
    """An HDF5 file with ``images``, ``labels`` and the ``habactl`` attribute, in memory
    (so that the one atomic writer writes it, and a full disk is one clear error)."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle.create_dataset("images", data=images)
        handle.create_dataset("labels", data=labels)
        handle.attrs["habactl"] = meta
    return buffer.getvalue()


def npz_bytes(images: Any, labels: Any, classes: list[str], meta: str) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(
        buffer, images=images, labels=labels, classes=np.array(classes), habactl=np.array(meta)
    )
    return buffer.getvalue()
