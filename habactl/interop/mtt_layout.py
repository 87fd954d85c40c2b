"""MTT layout (also DATM, FreD's decoded output, HaBa's images, DD-Ranking's input).

``images_best.pt``: (N, C, H, W) float, class-major, in the space the code trained in
(mean/std-normalised, or ZCA-whitened with ``--zca``); ``labels_best.pt``: (N,) class
indices, or (N, classes) learned soft labels (DATM stores logits); optionally a learned
learning rate as a scalar tensor (``syn_lr*.pt``, ``lr_best.pt``, ``lr.pt``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from habactl.interop.common import Imported, InteropError, Options, labelled_images, scalar_lr
from habactl.interop.safe_load import load_torch


def _role(path: Path) -> str | None:
    stem = path.stem.lower()
    if stem.startswith("images_zca"):
        return None  # MTT's inverse-whitened copy for viewing, not the training images
    if stem.startswith(("images", "image_syn", "syn_images")):
        return "images"
    if stem.startswith(("labels", "label_syn", "syn_labels")):
        return "labels"
    if "lr" in stem.split("_") or stem.startswith(("syn_lr", "lr", "learning_rate")):
        return "lr"
    return None


def find_files(files: list[Path]) -> dict[str, Path]:
    """images / labels / lr among the given files (a single folder is searched)."""
    if len(files) == 1 and files[0].is_dir():
        candidates = sorted(p for p in files[0].iterdir() if p.suffix == ".pt")
        explicit = False
    else:
        candidates, explicit = list(files), True
    found: dict[str, Path] = {}
    for path in candidates:
        role = _role(path)
        if role is None:
            if explicit:
                raise InteropError(
                    f"{path.name}: cannot tell whether it holds images, labels or "
                    "a learning rate (name it images*.pt, labels*.pt or *lr*.pt)"
                )
            continue
        best = path.stem.lower().endswith("_best")
        if role in found and not best:
            if explicit:
                raise InteropError(f"two {role} files: {found[role].name} and {path.name}")
            continue
        found[role] = path
    if "images" not in found:
        raise InteropError("no images file (images_best.pt) among the files given")
    return found


def read(files: list[Path], options: Options) -> Imported:
    found = find_files(files)
    notes: list[str] = []
    images_path, labels_path = found["images"], found.get("labels")
    if labels_path is None:
        raise InteropError(f"no labels file beside {images_path.name} (labels_best.pt)")
    images, labels = labelled_images(
        load_torch(images_path),
        load_torch(labels_path),
        (images_path.name, labels_path.name),
        notes,
    )
    learned_lr = None
    if "lr" in found:
        learned_lr = scalar_lr(load_torch(found["lr"]), found["lr"].name)
    return Imported(
        bases=images, labels=labels, space="normalised", learned_lr=learned_lr, notes=notes
    )


def export(archive: Path, folder: Path, *, force: bool = False) -> list[str]:
    """images_best.pt, labels_best.pt (+ lr_best.pt when the archive learned one)."""
    from habactl.interop.build import expanded, write_folder

    images, labels, dataset = expanded(archive)
    files = {"images_best.pt": images, "labels_best.pt": labels}
    lr = dataset.info.training.learned_lr
    if lr is not None:
        files["lr_best.pt"] = torch.tensor(float(lr))
    return write_folder(folder, files, force=force)
