"""The embedded sources: real data from installed wheels, fixed documented splits."""

from __future__ import annotations

import torch

from habactl.data import load_source
from habactl.data.embedded import mnist_5k
from source_contract import SourceContract

# Recorded in docs/data.md; a change here means every archive's provenance changes.
MNIST_5K_FINGERPRINT = "sha256:bc9c8688879d5af07a6a95a6f6040ae30e9627e2c86dfffda5fda5746e50118d"
DIGITS_FINGERPRINT = "sha256:76c66d1de35b9f94f147830ce633fc8ccf18dca77666a630bd6e4fd523e894fa"


class TestMnist5k(SourceContract):
    classes, shape, train_size, test_size, is_digits = 10, (1, 28, 28), 4000, 1000, True

    def write(self, folder):
        return "mnist-5k"

    def test_balanced_split(self, source):
        assert source.per_class_counts("train") == [400] * 10
        assert source.per_class_counts("test") == [100] * 10
        assert source.classes == [str(d) for d in range(10)]

    def test_real_digits(self, source):
        # Real MNIST: mostly black background, mean near the well-known 0.13.
        assert abs(source.mean()[0] - 0.1307) < 0.01
        assert source.train.images.max() == 1.0

    def test_fixed_fingerprint(self, source):
        assert source.fingerprint == MNIST_5K_FINGERPRINT

    def test_split_is_deterministic_across_parses(self, source):
        mnist_5k.cache_clear()
        fresh = mnist_5k()
        assert fresh is not source
        assert torch.equal(fresh.test.images, source.test.images)
        assert torch.equal(fresh.train.labels, source.train.labels)

    def test_cached_and_case_insensitive(self, source):
        assert load_source("MNIST-5K") is load_source("mnist-5k")


class TestDigits(SourceContract):
    classes, shape, train_size, test_size, is_digits = 10, (1, 8, 8), 1438, 359, True

    def write(self, folder):
        return "digits"

    def test_split_rule(self, source):
        # Class sizes 178, 182, 177, 183, 181, 182, 181, 179, 174, 180; test = round(n / 5).
        assert source.per_class_counts("test") == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]

    def test_fixed_fingerprint(self, source):
        assert source.fingerprint == DIGITS_FINGERPRINT
