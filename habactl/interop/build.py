"""From what a layout reader found to a checked .haba archive, and archives back to files."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from habactl.format.normalization import Normalizer, mean_std
from habactl.interop.common import Imported, InteropError
from habactl.interop.presets import Preset


@dataclass
class Normalisation:
    """What the user said about the space of the images (``--dataset``/``--mean``/``--std``
    /``--zca-from``)."""

    mean: list[float] | None = None
    std: list[float] | None = None
    zca_images: Tensor | None = None  # real training images in [0, 1], to fit ZCA on
    zca_eps: float = 0.1
    notes: list[str] = field(default_factory=list)


def normalisation_entry(
    imported: Imported, norm: Normalisation
) -> tuple[dict[str, Any], Tensor | None]:
    """The manifest's ``normalization`` and ZCA matrix; pixel-space bases are mapped into
    the mean/std space here (every stage is linear and sums its weights to 1, so
    normalising before decoding equals normalising after)."""
    channels = int(imported.bases.shape[1])
    if norm.zca_images is not None:
        if imported.space == "pixels":
            raise InteropError(
                "--zca-from: these files hold pixels, not ZCA-whitened images "
                "(IDC and uint8 arrays do not whiten); use --dataset or --mean/--std"
            )
        from habactl.interop.zca import fit_zca

        real = norm.zca_images
        if tuple(real.shape[1:]) != _image_shape(imported):
            raise InteropError(
                f"--zca-from: real images are {list(real.shape[1:])}, the "
                f"imported ones {list(_image_shape(imported))}"
            )
        fit = fit_zca(real, norm.zca_eps)
        norm.notes.append(f"ZCA fitted on {real.shape[0]} real images as MTT does, eps {fit.eps}")
        if imported.pipeline:
            # A stage between bases and images would carry the shift differently.
            norm.notes.append(
                f"the archive's test transform differs from MTT's by a constant of up to "
                f"{fit.residual:.3g} (whitened units) that these stages cannot absorb"
            )
        else:
            shift = fit.offset.to(torch.float32).view(1, *imported.bases.shape[1:])
            imported.bases = (imported.bases + shift).contiguous()
            norm.notes.append(
                f"synthetic images shifted by the constant the format's per-channel mean "
                f"leaves (max {fit.residual:.3g}), so training and test images move alike"
            )
        return (
            {
                "kind": "zca",
                "mean": fit.channel_mean,
                "std": [1.0] * channels,
                "eps": float(fit.eps),
            },
            fit.matrix,
        )
    if norm.mean is None:
        norm.notes.append(
            "no normalisation given (--dataset or --mean/--std): the archive says "
            "'none', so real test images are used as plain [0, 1] pixels"
        )
        return {"kind": "none"}, None
    assert norm.std is not None
    if len(norm.mean) != channels or len(norm.std) != channels:
        raise InteropError(
            f"--mean/--std give {len(norm.mean)}/{len(norm.std)} values for "
            f"{channels}-channel images"
        )
    entry = mean_std(norm.mean, norm.std)
    if imported.space == "pixels":
        imported.bases = Normalizer(entry)(imported.bases).contiguous()
    return entry, None


def _image_shape(imported: Imported) -> tuple[int, int, int]:
    from habactl.codecs import describe_pipeline

    c, h, w = (int(d) for d in imported.bases.shape[1:])
    if not imported.pipeline:
        return c, h, w
    c, h, w = (int(d) for d in describe_pipeline(imported.pipeline, (c, h, w)).out_shape)
    return c, h, w


def fingerprint(files: list[Path]) -> str:
    """sha256 over the input files' names and bytes: which files this archive came from."""
    digest = hashlib.sha256(b"habactl-import-v1\0")
    for path in sorted(
        p for f in files for p in ([f] if f.is_file() else sorted(f.iterdir())) if p.is_file()
    ):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def build_archive(
    imported: Imported,
    output: Path,
    *,
    kind: str,
    files: list[Path],
    classes: list[str] | None,
    preset: Preset | None,
    norm: Normalisation,
    ipc: int | None,
    force: bool = False,
) -> Path:
    """Write the archive; the claimed IPC defaults to the bases' storage-equivalent IPC."""
    from habactl.distill.archive import build_manifest
    from habactl.format import save_archive

    normalization, zca = normalisation_entry(imported, norm)
    labels = imported.labels
    needed = labels.shape[1] if labels.dim() == 2 else int(labels.max()) + 1
    if classes is None:
        classes = [str(c) for c in range(needed)]
    if labels.dim() == 2 and labels.shape[1] != len(classes):
        raise InteropError(
            f"soft labels have {labels.shape[1]} classes, --dataset/--classes name {len(classes)}"
        )
    if needed > len(classes):
        raise InteropError(
            f"labels go up to class {needed - 1}, but only {len(classes)} classes are named"
        )
    image = _image_shape(imported)
    if preset is not None and tuple(preset.shape) != image:
        raise InteropError(
            f"--dataset {preset.name} has images {list(preset.shape)}, the files "
            f"decode to {list(image)}"
        )
    per_image = math.prod(image)
    counts = imported.counts if ipc is None else "all"
    if ipc is None:
        ipc = max(1, math.ceil(imported.bases.numel() / (len(classes) * per_image)))
    hyper = {
        "imported": kind,
        "files": sorted(p.name for p in files),
        "notes": imported.notes + norm.notes,
    }
    manifest = build_manifest(
        source_name=preset.name if preset is not None else "unknown",
        source_fingerprint=fingerprint(files),
        classes=classes,
        image_shape=image,
        bases=imported.bases,
        labels=labels,
        pipeline=imported.pipeline,
        normalization=normalization,
        objective=f"import:{kind}",
        hyperparameters=hyper,
        iterations=0,
        seed=0,
        ipc=ipc,
        counts=counts,
        learned_lr=imported.learned_lr,
    )
    tensors: dict[str, Tensor] = {
        "bases": imported.bases,
        "labels": labels,
        **imported.stage_tensors,
    }
    if zca is not None:
        tensors["normalization.zca"] = zca
    return save_archive(output, tensors, manifest, overwrite=force)


def expanded(archive: Path) -> tuple[Tensor, Tensor, Any]:
    """Every decoded image (class-major: item b·E + v) and its label, and the dataset."""
    from habactl.training.dataset import HabaDataset

    dataset = HabaDataset(archive)
    images, labels = dataset.tensors()
    return images.contiguous(), labels.contiguous(), dataset


def write_folder(folder: Path, files: Mapping[str, Tensor | str], *, force: bool) -> list[str]:
    """The files, written into a new folder atomically (habactl/runtime/atomic.py: nothing
    half-written, and a folder of the user's own files is never replaced)."""
    import io

    from habactl.runtime.atomic import atomic_folder, check_folder_target, write_new_file

    check_folder_target(folder, force)
    with atomic_folder(folder, kind="export") as temp:
        for name, value in files.items():
            if isinstance(value, str):
                data = value.encode("utf-8")
            else:
                buffer = io.BytesIO()
                torch.save(value.detach().cpu().clone(), buffer)
                data = buffer.getvalue()
            write_new_file(temp / name, data)
    return sorted(files)
