"""The contract every data source meets, as tests a source's test class inherits.

Each source's test class (in tests/test_data_*.py) subclasses ``SourceContract`` (the
torchvision-tests pattern): it writes a tiny fake copy of its files in ``write`` and
states what it expects; pytest then runs every test below for it, checking shapes,
lengths, value range, labels, per-channel statistics, ``describe`` and the fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from habactl.data import DataSource, LabeledImages, load_source
from habactl.data.base import fingerprint


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
