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
# How the files start: an .npz is a zip archive (of .npy files); HDF5 has an 8-byte
# signature at offset 0 (or 512, 1024, ... after a user block).
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

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
    check_kind(path, "HDF5")
    try:
        with h5py.File(path, "r") as f:
            if isinstance(f.get("train"), h5py.Group):
                train = _h5_pair(path, f["train"], images_key, labels_key)
                test_group = f.get("test")
                has_test = isinstance(test_group, h5py.Group)
                test = _h5_pair(path, test_group, images_key, labels_key) if has_test else None
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
    check_kind(path, "npz")
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
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise DataError(
                f"{path}: cannot read .npz file (an array holds Python objects, "
                f"i.e. pickled data, which habactl never loads; store numeric arrays: "
                f"uint8 or float images, integer labels)"
            ) from exc
        raise DataError(f"{path}: cannot read .npz file ({reason(exc)})") from exc
    except _NPZ_ERRORS as exc:
        raise DataError(f"{path}: cannot read .npz file ({reason(exc)})") from exc
    return _build(path, raw_classes, train, test)


def _npz_pair(path: Path, npz, images_key: str, labels_key: str) -> Pair:
    for key in (images_key, labels_key):
        if key not in npz.files:
            found = ", ".join(sorted(npz.files)) or "nothing"
            raise DataError(f"{path}: no array {key!r} (found: {found})")
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
    _check_lengths(where, images, labels)
    return LabeledImages(images_from_array(images, where), labels_from_array(labels, where))


def _check_lengths(where: str, images: np.ndarray, labels: np.ndarray) -> None:
    """One label per image, checked before anything is split or indexed: a mismatch
    would otherwise drop images silently or fail deep inside the split."""
    n_images = int(images.shape[0]) if images.ndim else 0
    n_labels = int(labels.shape[0]) if labels.ndim else 0
    if n_images != n_labels:
        raise DataError(
            f"{where}: {n_images:,} images but {n_labels:,} labels; "
            f"every image needs exactly one label"
        )


def check_kind(path: Path, kind: str) -> None:
    """Say what a file is when it is not the kind its name promises (before a library
    gives a misleading reason, e.g. numpy's "pickled data" for a text file)."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an {'.npz' if kind == 'npz' else kind} file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if kind == "HDF5" and head != _HDF5_MAGIC:
                # Look for the signature after a user block, as HDF5 allows.
                offset = 512
                size = path.stat().st_size
                while offset + 8 <= size and head != _HDF5_MAGIC:
                    handle.seek(offset)
                    head = handle.read(8)
                    offset *= 2
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({reason(exc)})") from exc
    if kind == "npz" and not head.startswith(_ZIP_MAGICS):
        if head.startswith(_NPY_MAGIC):
            raise DataError(
                f"{path}: cannot read .npz file (it is a single .npy array; save "
                f"images and labels together: numpy.savez(path, images=..., "
                f"labels=...))"
            )
        raise DataError(
            f"{path}: cannot read .npz file (not an .npz at all: an .npz is a zip "
            f"archive of .npy arrays, as numpy.savez writes)"
        )
    if kind == "HDF5" and head != _HDF5_MAGIC:
        raise DataError(f"{path}: cannot read HDF5 file (not an HDF5 file: no HDF5 signature)")
