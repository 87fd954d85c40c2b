"""torchvision sources read from fake raw IDX files written in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from habactl.data import DataError, load_source
from helpers import FAKE_MNIST_TEST_PER_CLASS, FAKE_MNIST_TRAIN_PER_CLASS, write_fake_mnist
from source_contract import SourceContract


class TestMnist(SourceContract):
    classes, shape, is_digits = 10, (1, 28, 28), True
    train_size, test_size = 10 * FAKE_MNIST_TRAIN_PER_CLASS, 10 * FAKE_MNIST_TEST_PER_CLASS

    def write(self, folder):
        write_fake_mnist(folder)
        return str(folder)

    def load(self, spec):
        return load_source("mnist", root=spec)

    def test_names_and_pixels(self, source, spec):
        assert source.name == "mnist"
        assert source.classes == [str(d) for d in range(10)]
        raw = (Path(spec) / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()
        first_pixel = raw[16]  # after the 4-byte magic and three 4-byte dimensions
        assert float(source.train.images[0, 0, 0, 0]) == pytest.approx(first_pixel / 255)


class TestFashionMnist(SourceContract):
    classes, shape, is_digits = 10, (1, 28, 28), False
    train_size, test_size = 10 * FAKE_MNIST_TRAIN_PER_CLASS, 10 * FAKE_MNIST_TEST_PER_CLASS

    def write(self, folder):
        write_fake_mnist(folder, "FashionMNIST")
        return str(folder)

    def load(self, spec):
        return load_source("fashion-mnist", root=spec)

    def test_class_names_come_from_torchvision(self, source):
        assert source.classes[0] == "T-shirt/top"


def test_missing_root_names_the_expected_folder(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'MNIST' / 'raw'}.*--download"):
        load_source("mnist", root=tmp_path)


def test_missing_cifar_names_its_folder(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_source("cifar10", root=tmp_path)


def test_missing_file_in_existing_folder(tmp_path):
    raw = write_fake_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"mnist: cannot load the \w+ split from .*MNIST/raw"):
        load_source("mnist", root=tmp_path)


def test_corrupt_idx_file(tmp_path):
    raw = write_fake_mnist(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0f\x07garbage")
    with pytest.raises(DataError, match=r"mnist: cannot load the train split .*\(.*\)"):
        load_source("mnist", root=tmp_path)


def test_torchvision_sources_take_no_options(tmp_path):
    write_fake_mnist(tmp_path)
    with pytest.raises(DataError, match="unknown option"):
        load_source("mnist", root=tmp_path, images_key="x")


class _FakeCifar:
    """Stands in for torchvision's CIFAR10, whose real files carry md5 checks."""

    classes = ["airplane", "automobile", "bird"]

    def __init__(self, root, download=False, train=True):
        n = 6 if train else 3
        self.data = np.full((n, 32, 32, 3), 255, np.uint8)  # NHWC, as torchvision keeps it
        self.targets = (np.arange(n) % 3).tolist()


class _FakeSvhn:
    """Stands in for torchvision's SVHN: NCHW data and a `labels` array."""

    def __init__(self, root, download=False, split="train"):
        n = 20 if split == "train" else 10
        self.data = np.full((n, 3, 32, 32), 255, np.uint8)
        self.labels = np.arange(n) % 10


@pytest.mark.parametrize(
    "name, fake, classes, digits",
    [
        ("cifar10", ("CIFAR10", _FakeCifar), ["airplane", "automobile", "bird"], False),
        ("svhn", ("SVHN", _FakeSvhn), [str(d) for d in range(10)], True),
    ],
)
def test_rgb_sources_convert_layout_and_names(tmp_path, monkeypatch, name, fake, classes, digits):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, *fake)
    (tmp_path / "cifar-10-batches-py").mkdir()
    source = load_source(name, root=tmp_path)
    assert source.classes == classes and source.is_digits is digits
    assert tuple(source.train.images.shape[1:]) == (3, 32, 32)
    assert (len(source.train), len(source.test)) == ((6, 3) if name == "cifar10" else (20, 10))
    assert float(source.train.images.min()) == 1.0
