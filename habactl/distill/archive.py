"""Building a complete .haba archive from its parts (used by every objective)."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from habactl import __version__
from habactl.codecs.spec import format_version_for
from habactl.evaluation.protocol import STANDARD, STANDARD_ARCH
from habactl.format.account import budget_values
from habactl.nets.registry import arch_name


def created_timestamp() -> str:
    """UTC creation time; `SOURCE_DATE_EPOCH` pins it so that rebuilds are byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        _dt.datetime.fromtimestamp(int(epoch), tz=_dt.timezone.utc)
        if epoch
        else _dt.datetime.now(tz=_dt.timezone.utc).replace(microsecond=0)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def per_class_counts(labels: Tensor, num_classes: int) -> list[int]:
    hard = labels if labels.dim() == 1 else labels.argmax(dim=1)
    return [int(c) for c in torch.bincount(hard.long(), minlength=num_classes)]


def build_manifest(
    *,
    source_name: str,
    source_fingerprint: str,
    classes: list[str],
    image_shape: tuple[int, int, int],
    bases: Tensor,
    labels: Tensor,
    pipeline: list[dict[str, Any]],
    normalization: Mapping[str, Any],
    objective: str,
    hyperparameters: Mapping[str, Any],
    iterations: int,
    seed: int,
    ipc: int,
    counts: str = "all",
    learned_lr: float | None = None,
    protocol: Mapping[str, Any] | None = None,
    per_class: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Everything but `tensors`, `content_digest` and `manifest_digest`, which the writer
    fills in. `per_class`: the bases per class (class-sorted); by default counted from
    the labels (for soft labels, by their largest class, which a learned label need not
    keep: a run that learned labels passes its plan's counts)."""
    channels, height, width = image_shape
    # The network for the image size: "convnet" (depth 3) up to 45 px, as archives always
    # recorded it; "convnet-d4" at 64 px and so on (habactl.nets.registry.arch_name).
    recommended = dict(protocol or STANDARD.recommended(arch_name(STANDARD_ARCH, height, width)))
    if learned_lr is not None:
        recommended["lr"] = float(learned_lr)
    return {
        "format": "haba",
        "format_version": format_version_for(pipeline),  # 1.2: with a manifest digest
        "classes": list(classes),
        "image": {"channels": channels, "height": height, "width": width},
        "bases": {
            "count": int(bases.shape[0]),
            "per_class": (
                per_class_counts(labels, len(classes))
                if per_class is None
                else [int(n) for n in per_class]
            ),
            "shape": [int(s) for s in bases.shape[1:]],
        },
        "labels": {"kind": "hard" if labels.dim() == 1 else "soft"},
        "pipeline": list(pipeline),
        "normalization": dict(normalization),
        "training": {
            "learned_lr": None if learned_lr is None else float(learned_lr),
            "recommended": recommended,
        },
        "provenance": {
            "dataset": {"name": source_name, "fingerprint": source_fingerprint},
            "objective": objective,
            "hyperparameters": dict(hyperparameters),
            "iterations": int(iterations),
            "seed": int(seed),
            "library": f"habactl {__version__}",
            "created": created_timestamp(),
        },
        "storage": {
            "ipc": int(ipc),
            "counts": counts,
            "budget_values": budget_values(ipc, len(classes), image_shape),
        },
    }


def write_haba(
    path: str | os.PathLike[str],
    *,
    source: Any,
    bases: Tensor,
    labels: Tensor,
    pipeline: Any,
    normalization: Mapping[str, Any],
    objective: str,
    hyperparameters: Mapping[str, Any],
    iterations: int,
    seed: int,
    ipc: int,
    counts: str = "all",
    learned_lr: float | None = None,
    zca: Tensor | None = None,
    overwrite: bool = False,
    per_class: Sequence[int] | None = None,
    protocol: Mapping[str, Any] | None = None,
) -> Path:
    """Write an archive atomically. `source` is a `habactl.data.DataSource`,
    `pipeline` a `habactl.codecs.Pipeline` (its tensors are stored as `pipeline.*`);
    `protocol` the ``training.recommended`` entry (default: the standard recipe's)."""
    from habactl.format import save_archive

    image_shape = (source.channels, source.height, source.width)
    manifest = build_manifest(
        source_name=source.name,
        source_fingerprint=source.fingerprint,
        classes=list(source.classes),
        image_shape=image_shape,
        bases=bases,
        labels=labels,
        pipeline=pipeline.to_manifest(),
        normalization=normalization,
        objective=objective,
        hyperparameters=hyperparameters,
        iterations=iterations,
        seed=seed,
        ipc=ipc,
        counts=counts,
        learned_lr=learned_lr,
        per_class=per_class,
        protocol=protocol,
    )
    tensors: dict[str, Tensor] = {
        # As stored: float32, or a first quantize stage's codes (its grid fitted here).
        "bases": pipeline.encode_bases(bases.detach().float()).cpu().contiguous(),
        "labels": labels.detach().cpu().contiguous(),
    }
    tensors.update(
        {
            # float parameters as float32; a stage's integer tensors (a frequency mask) as they are
            name: (value.detach().float() if value.is_floating_point() else value.detach())
            .cpu()
            .contiguous()
            for name, value in pipeline.named_tensors().items()
        }
    )
    if zca is not None:
        tensors["normalization.zca"] = zca.detach().float().cpu().contiguous()
    return save_archive(path, tensors, manifest, overwrite=overwrite)
