"""Array files: HDF5 (.h5, .hdf5) and NumPy archives (.npz)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from habactl.data.arrays import class_names, images_from_array, labels_from_array, num_labels
from habactl.data.base import DataError, DataSource, LabeledImages, make_source, reason
from habactl.data.split import split_per_class

DEFAULT_IMAGES_KEY = "images"
DEFAULT_LABELS_KEY = "labels"
KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")
# What numpy and zipfile raise on truncated, corrupt or pickled content.
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)

Pair = tuple[np.ndarray, np.ndarray]


def load_hdf5(
    path: str | Path, images_key: str = DEFAULT_IMAGES_KEY, labels_key: str = DEFAULT_LABELS_KEY
) -> DataSource:
    """An HDF5 file: groups ``train/`` and ``test/`` holding ``images_key`` and
    ``labels_key``, or those two datasets at the top level (then split 80/20 per class).
    Class names come from the optional root attribute ``classes``.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if isinstance(f.get("train"), h5py.Group):
                train = _h5_pair(path, f["train"], images_key, labels_key)
                test_group = f.get("test")
                test = _h5_pair(path, test_group, images_key, labels_key) if isinstance(test_group, h5py.Group) else None
            else:
                train, test = _h5_pair(path, f, images_key, labels_key), None
            raw_classes = f.attrs.get("classes")
    except DataError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: cannot read HDF5 file ({reason(exc)})") from exc
    return _build(path, raw_classes, train, test)


def _h5_pair(path: Path, group, images_key: str, labels_key: str) -> Pair:
    return _h5_read(path, group, images_key), _h5_read(path, group, labels_key)


def _h5_read(path: Path, group, key: str) -> np.ndarray:
    import h5py

    item = group.get(key)
    where = f"{path}:{group.name.rstrip('/')}/{key}"
    if not isinstance(item, h5py.Dataset):
        found = sorted(group.keys())
        what = "is not a dataset" if item is not None else "is missing"
        raise DataError(f"{where} {what} (found: {', '.join(found) or 'nothing'})")
    return item[()]


def load_npz(
    path: str | Path, images_key: str = DEFAULT_IMAGES_KEY, labels_key: str = DEFAULT_LABELS_KEY
) -> DataSource:
    """A .npz archive: Keras-style ``x_train, y_train[, x_test, y_test]``, or
    ``images_key`` and ``labels_key`` (then split 80/20 per class). Class names come
    from the optional array ``classes``.
    """
    path = Path(path)
    try:
        # allow_pickle=False: an .npz from elsewhere must not run code when loaded.
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "x_train" in keys or "y_train" in keys:
                train = _npz_pair(path, npz, "x_train", "y_train")
                has_test = "x_test" in keys or "y_test" in keys
                test = _npz_pair(path, npz, "x_test", "y_test") if has_test else None
            else:
                train, test = _npz_pair(path, npz, images_key, labels_key), None
            raw_classes = npz["classes"] if "classes" in keys else None
    except DataError:
        raise
    except _NPZ_ERRORS as exc:
        raise DataError(f"{path}: cannot read .npz file ({reason(exc)})") from exc
    return _build(path, raw_classes, train, test)


def _npz_pair(path: Path, npz, images_key: str, labels_key: str) -> Pair:
    for key in (images_key, labels_key):
        if key not in npz.files:
            raise DataError(f"{path}: no array {key!r} (found: {', '.join(sorted(npz.files)) or 'nothing'})")
    return npz[images_key], npz[labels_key]


def _build(path: Path, raw_classes, train: Pair, test: Pair | None) -> DataSource:
    train_split = _to_split(f"{path} (train)", train)
    if test is None:
        train_split, test_split = split_per_class(train_split)
    else:
        test_split = _to_split(f"{path} (test)", test)
    classes = class_names(raw_classes, num_labels(train_split.labels, test_split.labels), str(path))
    return make_source(path.name, classes, train_split, test_split, is_digits=False)


def _to_split(where: str, pair: Pair) -> LabeledImages:
    images, labels = pair
    return LabeledImages(images_from_array(images, where), labels_from_array(labels, where))
