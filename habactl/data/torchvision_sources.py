"""torchvision data sets read from a local folder (download only when asked)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from habactl.data.arrays import images_from_array, labels_from_array
from habactl.data.base import DataError, DataSource, LabeledImages, make_source, reason
from habactl.data.embedded import DIGIT_CLASSES

ROOT_ENV = "HABACTL_DATA"

# What torchvision and its readers raise on missing, truncated or corrupt files, and on
# failed downloads (urllib errors are OSErrors).
_LOAD_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    TypeError,
    AssertionError,
    EOFError,
    KeyError,
    IndexError,
    pickle.UnpicklingError,
)


@dataclass(frozen=True)
class TorchvisionSpec:
    """How one registry name maps onto a torchvision class and its files."""

    name: str
    class_name: str
    is_digits: bool
    folder: Callable[[Path], Path]  # where the files must lie, for the error message
    digit_classes: bool  # "0".."9" instead of the dataset's own names


def _mnist_folder(class_name: str) -> Callable[[Path], Path]:
    return lambda root: root / class_name / "raw"


SPECS: dict[str, TorchvisionSpec] = {
    s.name: s
    for s in (
        TorchvisionSpec("mnist", "MNIST", True, _mnist_folder("MNIST"), True),
        TorchvisionSpec(
            "fashion-mnist", "FashionMNIST", False, _mnist_folder("FashionMNIST"), False
        ),
        # Characters, not digits, but a flipped character is as wrong as a flipped digit.
        TorchvisionSpec("kmnist", "KMNIST", True, _mnist_folder("KMNIST"), False),
        TorchvisionSpec("cifar10", "CIFAR10", False, lambda r: r / "cifar-10-batches-py", False),
        TorchvisionSpec("cifar100", "CIFAR100", False, lambda r: r / "cifar-100-python", False),
        # torchvision maps SVHN's label 10 to digit 0, so labels are the digits themselves.
        TorchvisionSpec("svhn", "SVHN", True, lambda r: r, True),
    )
}


def default_root() -> Path:
    """``$HABACTL_DATA`` if set, else ``~/.cache/habactl/data``."""
    env = os.environ.get(ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "habactl" / "data"


def load_torchvision(
    name: str, root: str | os.PathLike | None = None, download: bool = False
) -> DataSource:
    """Train and test splits of the torchvision data set registered as ``name``."""
    classes, arrays = torchvision_arrays(name, root, download)
    train, test = (_to_split(name, *arrays[s], s) for s in ("train", "test"))
    return make_source(name, classes, train, test, is_digits=SPECS[name].is_digits)


def torchvision_arrays(
    name: str, root: str | os.PathLike | None = None, download: bool = False
) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Class names and, per split, the data set's own (images, labels) arrays, as
    torchvision holds them (uint8, the data set's layout)."""
    spec = SPECS[name]
    root_path = Path(root).expanduser() if root is not None else default_root()
    folder = spec.folder(root_path)
    if not download and not folder.is_dir():
        raise DataError(
            f"{name}: no data at {folder}; put the torchvision files there "
            f"(or choose another root), or pass --download to fetch them"
        )
    import torchvision.datasets as tvd

    dataset_class = getattr(tvd, spec.class_name)
    arrays, classes = {}, DIGIT_CLASSES
    for split in ("train", "test"):
        kwargs = {"split": split} if name == "svhn" else {"train": split == "train"}
        try:
            dataset = dataset_class(str(root_path), download=download, **kwargs)
        except _LOAD_ERRORS as exc:
            hint = "" if download else "; pass --download to fetch them"
            raise DataError(
                f"{name}: cannot load the {split} split from {folder} ({reason(exc)}){hint}"
            ) from exc
        arrays[split] = _arrays(dataset)
        if split == "train" and not spec.digit_classes:
            classes = list(dataset.classes)
    return list(classes), arrays


def _arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    data = dataset.data
    data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    targets = dataset.labels if hasattr(dataset, "labels") else dataset.targets
    targets = targets.numpy() if hasattr(targets, "numpy") else np.asarray(targets)
    return data, targets


def _to_split(name: str, data: np.ndarray, targets: np.ndarray, split: str) -> LabeledImages:
    where = f"{name} ({split})"
    return LabeledImages(images_from_array(data, where), labels_from_array(targets, where))
