"""The contract every data source meets, and the shared helpers behind it.

Each source's test class inherits ``SourceContract`` (the torchvision-tests pattern):
it writes a tiny fake copy of its files in ``write`` and states what it expects; the
contract checks shapes, lengths, value range, labels, statistics and fingerprints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from habactl.data import DataError, DataSource, LabeledImages, load_source
from habactl.data.base import fingerprint, make_source
from habactl.data.split import holdout_count, split_indices


class SourceContract:
    """Subclasses set the expectations and implement ``write``."""

    classes: int
    shape: tuple[int, int, int]
    train_size: int
    test_size: int
    is_digits: bool = False
    options: dict = {}

    def write(self, folder: Path) -> str:
        """Write the fake files under ``folder``; return the spec to load."""
        raise NotImplementedError

    def load(self, spec: str) -> DataSource:
        return load_source(spec, **self.options)

    # Class-scoped, so each source's files are written and loaded once per class.
    @pytest.fixture(scope="class")
    @classmethod
    def spec(cls, tmp_path_factory) -> str:
        return cls().write(tmp_path_factory.mktemp(cls.__name__))

    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, spec) -> DataSource:
        return cls().load(spec)

    def test_smoke(self, source):
        assert isinstance(source, DataSource)
        assert source.is_digits is self.is_digits
        assert source.num_classes == len(source.classes) == self.classes
        assert all(isinstance(c, str) and c for c in source.classes)
        for split in (source.train, source.test):
            assert isinstance(split, LabeledImages)
            assert split.images.dtype == torch.float32
            assert split.labels.dtype == torch.int64
            assert tuple(split.images.shape[1:]) == self.shape

    def test_lengths(self, source):
        assert (len(source.train), len(source.test)) == (self.train_size, self.test_size)
        assert sum(source.per_class_counts("train")) == self.train_size
        assert sum(source.per_class_counts("test")) == self.test_size
        assert (source.channels, source.height, source.width) == self.shape

    def test_values_and_labels_in_range(self, source):
        for split in (source.train, source.test):
            assert torch.isfinite(split.images).all()
            assert split.images.min() >= 0.0 and split.images.max() <= 1.0
            assert split.labels.min() >= 0 and split.labels.max() < source.num_classes
        assert min(source.per_class_counts("train")) > 0

    def test_mean_and_std_per_channel(self, source):
        mean, std = source.mean(), source.std()
        assert len(mean) == len(std) == source.channels
        flat = source.train.images.transpose(0, 1).reshape(source.channels, -1).double()
        assert mean == pytest.approx(flat.mean(dim=1).tolist(), abs=1e-6)
        assert std == pytest.approx(flat.std(dim=1, unbiased=False).tolist(), abs=1e-6)

    def test_describe(self, source):
        described = source.describe()
        assert described["name"] == source.name
        assert described["fingerprint"] == source.fingerprint
        assert (described["train"], described["test"]) == (self.train_size, self.test_size)

    def test_fingerprint_is_stable_and_content_bound(self, source, spec):
        assert source.fingerprint.startswith("sha256:") and len(source.fingerprint) == 7 + 64
        assert self.load(spec).fingerprint == source.fingerprint
        changed = source.train.images.clone()
        changed[0, 0, 0, 0] = 1.0 - changed[0, 0, 0, 0]
        other = LabeledImages(changed, source.train.labels)
        assert fingerprint(source.classes, other, source.test) != source.fingerprint


# ---- the shared helpers, on in-memory data ----


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
