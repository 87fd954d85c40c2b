"""Tiny real data for the objective and experts tests: a few classes of mnist-5k."""

from __future__ import annotations

import functools

import pytest
import torch

from habactl.data.base import LabeledImages, make_source


@functools.lru_cache(maxsize=None)
def tiny_mnist(classes: int = 3, train_per_class: int = 20, test_per_class: int = 5):
    """The first `classes` digits of mnist-5k, `train_per_class` training images each."""
    from habactl.data import load_source

    full = load_source("mnist-5k")

    def take(split: LabeledImages, per: int) -> LabeledImages:
        picks = torch.cat([torch.nonzero(split.labels == k).flatten()[:per] for k in range(classes)])
        return LabeledImages(images=split.images[picks].clone(), labels=split.labels[picks].clone())

    return make_source(f"mnist-5k-{classes}", full.classes[:classes], take(full.train, train_per_class),
                       take(full.test, test_per_class), is_digits=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches on a shared CPU run far faster on one thread (no spinning workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
