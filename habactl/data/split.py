"""The one seeded, per-class train/test split used by every source that ships no test set."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from habactl.data.base import LabeledImages

SPLIT_SEED = 0


def holdout_count(class_size: int) -> int:
    """Test images taken from a class of ``class_size``: 20 %, rounded to nearest.

    ``(n + 2) // 5`` is round(n / 5) without float ties (n / 5 never ends in .5). A
    class of 2 or more keeps at least one image on each side; a class of one stays
    in train.
    """
    if class_size < 2:
        return 0
    return max(1, (class_size + 2) // 5)


def split_indices(labels: Tensor, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """Train and test indices: per class, a seeded permutation, first ``holdout_count``
    positions to test. Class c uses ``numpy.random.default_rng([seed, c])``, so a
    class's split does not depend on the other classes. Indices come back sorted, so
    the original order (e.g. class-sorted) is kept within each split.
    """
    labels_np = labels.numpy()
    train_parts, test_parts = [], []
    for cls in np.unique(labels_np).tolist():
        members = np.flatnonzero(labels_np == cls)
        train_pos, test_pos = split_class(int(cls), members.size, seed)
        test_parts.append(members[test_pos])
        train_parts.append(members[train_pos])
    train_idx = np.sort(np.concatenate(train_parts)) if train_parts else np.zeros(0, np.int64)
    test_idx = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, np.int64)
    return torch.from_numpy(train_idx.astype(np.int64)), torch.from_numpy(test_idx.astype(np.int64))


def split_class(cls: int, size: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Positions (sorted) within class ``cls``'s ``size`` items, in their original
    order, that go to train and to test: the rule of :func:`split_indices` for one
    class, for sources that list a class at a time."""
    order = np.random.default_rng([seed, int(cls)]).permutation(size)
    n_test = holdout_count(size)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def split_per_class(
    data: LabeledImages, seed: int = SPLIT_SEED
) -> tuple[LabeledImages, LabeledImages]:
    """Split one labelled set into (train, test) by :func:`split_indices`."""
    train_idx, test_idx = split_indices(data.labels, seed)
    return (
        LabeledImages(data.images[train_idx], data.labels[train_idx]),
        LabeledImages(data.images[test_idx], data.labels[test_idx]),
    )
