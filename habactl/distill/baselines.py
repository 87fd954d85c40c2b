"""Coreset baselines: real images kept as they are (no optimisation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from habactl.errors import HabaError


def random_per_class(labels: Tensor, per_class: int, num_classes: int, seed: int) -> Tensor:
    """Indices of `per_class` random images of each class, class-sorted, reproducible."""
    if per_class < 1:
        raise HabaError(f"need at least 1 image per class, got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    chosen: list[Tensor] = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c, as_tuple=False).flatten()
        if members.numel() < per_class:
            raise HabaError(
                f"class {c} has {members.numel()} training images; "
                f"cannot select {per_class} per class"
            )
        order = torch.randperm(members.numel(), generator=generator)[:per_class]
        chosen.append(members[order.sort().values])
    return torch.cat(chosen)


RANDOM_SUMMARY = "random real images (the coreset baseline)"


def random_archive(
    source: Any, path: str | Path, *, ipc: int, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write the coreset baseline: `ipc` random real images per class, stored as they
    are (normalised by the training set's mean and std, no decode stages)."""
    from habactl.codecs import Pipeline
    from habactl.distill.archive import write_haba
    from habactl.format.normalization import Normalizer, mean_std

    normalization = mean_std(source.mean(), source.std())
    indices = random_per_class(source.train.labels, ipc, source.num_classes, seed)
    bases = Normalizer(normalization)(source.train.images[indices])
    labels = source.train.labels[indices].long()
    pipeline = Pipeline.from_manifest([], tuple(bases.shape[1:]))
    return Path(
        write_haba(
            path,
            source=source,
            bases=bases,
            labels=labels,
            pipeline=pipeline,
            normalization=normalization,
            objective="random",
            hyperparameters={"per_class": ipc},
            iterations=0,
            seed=seed,
            ipc=ipc,
            overwrite=overwrite,
        )
    )


@dataclass(frozen=True)
class Baseline:
    """A way to make an archive that `habactl compress --objective NAME` offers beside
    the distillation objectives: real images kept as they are, nothing optimised.

    ``options``: the compress options it takes besides where the data and the archive
    are (any other is an error); ``codecs``: the codecs it can store; ``make(source,
    path, ipc=, seed=, overwrite=)`` writes the archive.
    """

    name: str
    summary: str
    make: Callable[..., Path]
    options: tuple[str, ...] = ("ipc", "seed", "codec")
    codecs: tuple[str, ...] = ("raw",)


# What --objective offers besides the objectives (habactl.distill.objectives.OBJECTIVES).
BASELINES = {"random": Baseline("random", RANDOM_SUMMARY, random_archive)}
