"""Your own arrays: one .npz, .safetensors or .pt (plain tensors) file.

Keys: ``images`` (N, C, H, W) float in the space you trained in — or uint8 pixels,
which are taken as [0, 255] and normalised with the given mean/std — ``labels`` (N,)
or (N, classes), optional ``lr`` (a scalar).
"""

from __future__ import annotations

from pathlib import Path

import torch

from habactl.interop.common import (
    Imported,
    InteropError,
    Options,
    labelled_images,
    one_file,
    scalar_lr,
)
from habactl.interop.safe_load import load_any


def read(files: list[Path], options: Options) -> Imported:
    path = one_file(files, "npz", ".npz / .safetensors / .pt")
    content = load_any(path)
    if not isinstance(content, dict):
        raise InteropError(f"{path.name}: expected named arrays (images, labels, optional lr)")
    unknown = sorted(set(content) - {"images", "labels", "lr"})
    if unknown or "images" not in content or "labels" not in content:
        raise InteropError(
            f"{path.name}: expected the keys images, labels (and optional lr), "
            f"found {sorted(content)}"
        )
    notes: list[str] = []
    raw = content["images"]
    space = "normalised"
    if isinstance(raw, torch.Tensor) and raw.dtype == torch.uint8:
        raw, space = raw.to(torch.float32) / 255.0, "pixels"
        notes.append("uint8 images read as pixels / 255")
    names = (f"{path.name} images", f"{path.name} labels")
    images, labels = labelled_images(raw, content["labels"], names, notes)
    lr = scalar_lr(content["lr"], f"{path.name} lr") if "lr" in content else None
    return Imported(bases=images, labels=labels, space=space, learned_lr=lr, notes=notes)
