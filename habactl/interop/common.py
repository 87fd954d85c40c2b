"""What a layout reader hands back, and the checks every layout shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from habactl.interop.safe_load import InteropError

SPACES = ("normalised", "pixels")


@dataclass
class Options:
    """What the user supplies that the files do not say."""

    classes: list[str] | None = None  # from --dataset or --classes
    factor: int = 1  # idc: multi-formation factor
    experiment: int | None = None  # dc: which experiment of res_*.pt
    dataset: str | None = None  # preset name, for codebase-specific statistics


@dataclass
class Imported:
    """Bases in class order plus what decodes them; ``space`` says whether the bases
    are already in the normalised space the codebase trained in, or pixels in [0, 1]."""

    bases: Tensor
    labels: Tensor  # (N,) int64 hard, or (N, K) float32 soft
    space: str
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    stage_tensors: dict[str, Tensor] = field(default_factory=dict)
    learned_lr: float | None = None
    counts: str = "all"  # "bases" when the codebase's own claim leaves parts out
    notes: list[str] = field(default_factory=list)
    zca_space: bool | None = None  # True/False when the files tell; None when unknown


def as_images(value: Any, name: str) -> Tensor:
    """A float (N, C, H, W) tensor, or one clear error naming the file."""
    if not isinstance(value, Tensor):
        raise InteropError(f"{name}: expected an image tensor, found {type(value).__name__}")
    if value.dim() != 4 or value.shape[0] == 0:
        raise InteropError(f"{name}: expected images (N, C, H, W), found shape {list(value.shape)}")
    if not value.is_floating_point():
        raise InteropError(f"{name}: expected float images, found {value.dtype}")
    images = value.detach().to(torch.float32).contiguous()
    if not bool(images.isfinite().all()):
        raise InteropError(f"{name}: images hold NaN or infinite values")
    return images


def as_labels(value: Any, count: int, name: str, notes: list[str]) -> Tensor:
    """Hard (N,) int64, or soft (N, K): learned logits (any negative value) become their
    softmax; non-negative rows are kept as the codebase stored them."""
    if not isinstance(value, Tensor):
        raise InteropError(f"{name}: expected a label tensor, found {type(value).__name__}")
    if value.dim() == 0 or value.shape[0] != count:
        raise InteropError(f"{name}: {list(value.shape)} labels for {count} images")
    if value.dim() == 1:
        if value.is_floating_point():
            if not bool((value == value.round()).all()):
                raise InteropError(f"{name}: hard labels must be whole numbers")
        labels = value.detach().to(torch.int64)
        if int(labels.min()) < 0:
            raise InteropError(f"{name}: negative class index {int(labels.min())}")
        return labels.contiguous()
    if value.dim() != 2 or not value.is_floating_point():
        raise InteropError(
            f"{name}: expected (N,) class indices or (N, classes) soft labels, "
            f"found {value.dtype} {list(value.shape)}"
        )
    soft = value.detach().to(torch.float32)
    if not bool(soft.isfinite().all()):
        raise InteropError(f"{name}: soft labels hold NaN or infinite values")
    if bool((soft < 0).any()):
        notes.append("soft labels: the file holds logits; stored as their softmax")
        soft = soft.softmax(dim=1)
    return soft.contiguous()


def class_order(bases: Tensor, labels: Tensor, notes: list[str]) -> tuple[Tensor, Tensor]:
    """Bases sorted by class (stable), as the format requires; a note when reordered."""
    hard = labels if labels.dim() == 1 else labels.argmax(dim=1)
    if bool((hard[1:] >= hard[:-1]).all()):
        return bases, labels
    order = torch.sort(hard, stable=True).indices
    notes.append("images were not in class order: reordered by class (stable)")
    return bases[order].contiguous(), labels[order].contiguous()


def labelled_images(
    images: Any, labels: Any, names: tuple[str, str], notes: list[str]
) -> tuple[Tensor, Tensor]:
    """Checked images (``as_images``) and their labels (``as_labels``), in class order;
    ``names`` are the images' and the labels' places for error messages."""
    checked = as_images(images, names[0])
    return class_order(checked, as_labels(labels, checked.shape[0], names[1], notes), notes)


def scalar_lr(value: Any, name: str) -> float:
    """A learned learning rate from a scalar tensor or number (> 0)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise InteropError(
                f"{name}: a learning rate must be one number, found {list(value.shape)}"
            )
        value = float(value.reshape(()).item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InteropError(
            f"{name}: a learning rate must be a number, found {type(value).__name__}"
        )
    lr = float(value)
    if not lr > 0 or lr == float("inf"):
        raise InteropError(f"{name}: learning rate {lr} is not positive and finite")
    return lr


def one_file(files: list[Path], kind: str, what: str) -> Path:
    if len(files) != 1:
        raise InteropError(f"{kind}: expected one file ({what}), got {len(files)}")
    return files[0]


def balanced_labels(count: int, classes: int, name: str) -> Tensor:
    """Labels of a class-major file that stores none: ``count / classes`` per class."""
    if count % classes:
        raise InteropError(
            f"{name}: {count} images do not split evenly into {classes} classes "
            "(the layout stores no labels, so it must be class-major, equal per class)"
        )
    return torch.arange(classes).repeat_interleave(count // classes)
