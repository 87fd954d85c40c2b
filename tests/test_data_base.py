"""The data layer's shared pieces, on in-memory images: ``make_source``'s checks, the
fingerprint, the seeded per-class holdout split, and the cached statistics. (The tests
every source's loader inherits are in source_contract.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from habactl.data import DataError, LabeledImages
from habactl.data.base import fingerprint, make_source
from habactl.data.split import holdout_count, split_indices


def _split(n=6, classes=2, shape=(1, 4, 4), seed=0) -> LabeledImages:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((n, *shape), generator=generator)
    return LabeledImages(images, torch.arange(n) % classes)


def test_make_source_fingerprint_ignores_the_name():
    train, test = _split(), _split(seed=1)
    a = make_source("a", ["x", "y"], train, test, is_digits=False)
    b = make_source("b", ["x", "y"], train, test, is_digits=False)
    assert a.fingerprint == b.fingerprint
    c = make_source("a", ["x", "z"], train, test, is_digits=False)
    assert c.fingerprint != a.fingerprint


def test_fingerprint_changes_with_one_label():
    train, test = _split(), _split(seed=1)
    labels = train.labels.clone()
    labels[0] = 1 - labels[0]
    assert fingerprint(["x", "y"], train, test) != fingerprint(
        ["x", "y"], LabeledImages(train.images, labels), test
    )


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: LabeledImages(s.images.clone().fill_(float("nan")), s.labels), "NaN or Inf"),
        (lambda s: LabeledImages(s.images.clone().fill_(float("inf")), s.labels), "NaN or Inf"),
        (lambda s: LabeledImages(s.images * 2 + 0.1, s.labels), r"\[0, 1\]"),
        (lambda s: LabeledImages(s.images, s.labels + 5), "label 6 is outside"),
        (lambda s: LabeledImages(s.images, s.labels[:-1]), "6 images but 5 labels"),
        (lambda s: LabeledImages(s.images.double(), s.labels), "float32"),
        (lambda s: LabeledImages(s.images[:0], s.labels[:0]), "no images"),
    ],
)
def test_validation_rejects(corrupt, message):
    with pytest.raises(DataError, match=message):
        make_source("bad", ["x", "y"], corrupt(_split()), _split(), is_digits=False)


def test_validation_names_an_empty_train_class():
    train = LabeledImages(torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(DataError, match="class 'y' has no train images"):
        make_source("bad", ["x", "y"], train, _split(), is_digits=False)


def test_validation_rejects_mismatched_splits():
    with pytest.raises(DataError, match="train images are"):
        make_source("bad", ["x", "y"], _split(), _split(shape=(3, 4, 4)), is_digits=False)


def test_holdout_count_is_a_fifth_rounded_with_one_each_side():
    assert [holdout_count(n) for n in (0, 1, 2, 4, 5, 7, 8, 10, 178, 500)] == [
        0,
        0,
        1,
        1,
        1,
        1,
        2,
        2,
        36,
        100,
    ]


def test_split_is_per_class_seeded_and_order_keeping():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    train, test = split_indices(labels)
    assert torch.equal(train, train.sort().values) and torch.equal(test, test.sort().values)
    assert sorted(train.tolist() + test.tolist()) == list(range(16))
    assert torch.bincount(labels[test], minlength=3).tolist() == [2, 1, 0]
    again_train, again_test = split_indices(labels)
    assert torch.equal(train, again_train) and torch.equal(test, again_test)
    # A class's split does not depend on the other classes.
    only_first = split_indices(labels[:10])[1]
    assert torch.equal(only_first, test[labels[test] == 0])


def test_split_differs_with_the_seed():
    labels = torch.tensor([0] * 50 + [1] * 50)
    assert not torch.equal(split_indices(labels, seed=0)[1], split_indices(labels, seed=1)[1])


def test_stats_are_cached_and_not_shared_lists():
    source = make_source("s", ["x", "y"], _split(), _split(seed=1), is_digits=False)
    first = source.mean()
    first.append(99.0)
    assert len(source.mean()) == 1
    assert np.isclose(source.mean()[0], float(source.train.images.double().mean()))
