"""HDF5 and .npz array files: both layouts each, custom keys, broken files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from habactl.data import DataError, load_source
from source_contract import SourceContract


def arrays(n_per_class=5, classes=3, shape=(8, 8), channels_last=None, seed=0):
    """uint8 images (N, H, W) or (N, H, W, C) / (N, C, H, W) and class-sorted labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    if channels_last is None:
        size = (labels.size, *shape)
    elif channels_last:
        size = (labels.size, *shape, 3)
    else:
        size = (labels.size, 3, *shape)
    return rng.integers(0, 256, size=size, dtype=np.uint8), labels


class TestHdf5Groups(SourceContract):
    """train/ and test/ groups, NHWC uint8, class names attribute."""

    classes, shape, train_size, test_size = 3, (3, 8, 8), 15, 6

    def write(self, folder):
        path = folder / "set.h5"
        with h5py.File(path, "w") as f:
            for split, n, seed in (("train", 5, 0), ("test", 2, 1)):
                x, y = arrays(n, channels_last=True, seed=seed)
                f.create_dataset(f"{split}/images", data=x)
                f.create_dataset(f"{split}/labels", data=y)
            f.attrs["classes"] = ["ant", "bee", "cow"]
        return str(path)

    def test_layout_and_names(self, source, spec):
        assert source.classes == ["ant", "bee", "cow"]
        assert source.name == "set.h5"
        with h5py.File(spec) as f:
            first = f["train/images"][0]
        assert np.allclose(source.train.images[0].permute(1, 2, 0).numpy() * 255, first)


class TestHdf5FlatCustomKeys(SourceContract):
    """Top-level datasets under custom keys, NCHW float32, split 80/20 per class."""

    classes, shape, train_size, test_size = 3, (3, 8, 8), 12, 3
    options = {"images_key": "x", "labels_key": "y"}

    def write(self, folder):
        x, y = arrays(5, channels_last=False)
        path = folder / "flat.hdf5"
        with h5py.File(path, "w") as f:
            f["x"] = x.astype(np.float32) / 255
            f["y"] = y.astype(np.int32)
        return str(path)


class TestNpzKeras(SourceContract):
    """x_train, y_train, x_test, y_test; grayscale (N, H, W)."""

    classes, shape, train_size, test_size = 3, (1, 8, 8), 12, 6

    def write(self, folder):
        (x, y), (xt, yt) = arrays(4), arrays(2, seed=1)
        path = folder / "keras.npz"
        np.savez(path, x_train=x, y_train=y.astype(np.uint8), x_test=xt, y_test=yt[:, None])
        return str(path)


class TestNpzImagesLabels(SourceContract):
    """images, labels and classes; (N, 1, H, W) float64; split 80/20 per class."""

    classes, shape, train_size, test_size = 3, (1, 8, 8), 12, 3

    def write(self, folder):
        x, y = arrays(5)
        path = folder / "plain.npz"
        np.savez_compressed(
            path, images=x[:, None] / 255.0, labels=y, classes=np.array(["a", "b", "c"])
        )
        return str(path)

    def test_class_names(self, source):
        assert source.classes == ["a", "b", "c"]


def test_hdf5_missing_key_lists_what_is_there(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f["pixels"], f["labels"] = arrays()
    with pytest.raises(DataError, match=r"f\.h5:/images is missing \(found: labels, pixels\)"):
        load_source(str(path))


def test_hdf5_not_hdf5(tmp_path):
    path = tmp_path / "f.h5"
    path.write_bytes(b"definitely not hdf5")
    with pytest.raises(DataError, match=r"f\.h5: cannot read HDF5 file \(.+\)") as raised:
        load_source(str(path))
    assert "\n" not in str(raised.value)  # the CLI prints one line


def test_npz_nan_is_rejected(tmp_path):
    x, y = arrays()
    x = x.astype(np.float32) / 255
    x[3, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", images=x, labels=y)
    with pytest.raises(DataError, match="NaN or Inf"):
        load_source(str(tmp_path / "nan.npz"))


def test_npz_values_out_of_range(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "big.npz", images=x.astype(np.float32), labels=y)
    with pytest.raises(DataError, match=r"\[0, 1\], found \[0, 255\]"):
        load_source(str(tmp_path / "big.npz"))


def test_npz_corrupt_file(tmp_path):
    x, y = arrays()
    path = tmp_path / "cut.npz"
    np.savez(path, images=x, labels=y)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"cut\.npz: cannot read \.npz file") as raised:
        load_source(str(path))
    assert "\n" not in str(raised.value)


def test_npz_missing_key(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "k.npz", x_train=x, y_train=y, x_test=x)
    with pytest.raises(DataError, match=r"no array 'y_test' \(found: x_test, x_train, y_train\)"):
        load_source(str(tmp_path / "k.npz"))


def test_npz_pickled_objects_are_refused(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "o.npz", images=x, labels=np.array(list(y), dtype=object))
    with pytest.raises(DataError, match=r"o\.npz: cannot read"):
        load_source(str(tmp_path / "o.npz"))


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((15, 8, 8, 5), np.uint8), "cannot tell the channel axis"),
        (np.zeros((15, 64), np.uint8), r"must be \(N, H, W\)"),
        (np.zeros((15, 8, 8), np.int32), "store uint8"),
    ],
)
def test_npz_bad_image_arrays(tmp_path, images, message):
    np.savez(tmp_path / "bad.npz", images=images, labels=arrays()[1])
    with pytest.raises(DataError, match=message):
        load_source(str(tmp_path / "bad.npz"))


def test_npz_label_problems(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "neg.npz", images=x, labels=y - 1)
    with pytest.raises(DataError, match="label -1 is negative"):
        load_source(str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "flt.npz", images=x, labels=y.astype(np.float32))
    with pytest.raises(DataError, match="labels must be integers"):
        load_source(str(tmp_path / "flt.npz"))
    np.savez(tmp_path / "few.npz", images=x, labels=y, classes=np.array(["a", "b"]))
    with pytest.raises(DataError, match="2 class names but labels go up to 2"):
        load_source(str(tmp_path / "few.npz"))


def test_same_data_same_fingerprint_across_formats(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "a.npz", images=x, labels=y)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["images"], f["labels"] = x, y
    from_npz, from_h5 = load_source(str(tmp_path / "a.npz")), load_source(str(tmp_path / "a.h5"))
    assert from_npz.fingerprint == from_h5.fingerprint


# --- images and labels that do not pair up; files that are not what their name says ------


def _write_pair(path, images, labels):
    if path.suffix == ".npz":
        np.savez(path, images=images, labels=labels)
    else:
        with h5py.File(path, "w") as f:
            f["images"], f["labels"] = images, labels


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize(
    "images, labels", [(15, 12), (12, 15)], ids=["more-images", "fewer-images"]
)
def test_one_label_per_image_is_checked_before_splitting(tmp_path, suffix, images, labels):
    x, y = arrays(5)  # 15 of each
    path = tmp_path / f"pairs{suffix}"
    _write_pair(path, x[:images], y[:labels])
    with pytest.raises(DataError, match=rf"{images} images but {labels} labels") as raised:
        load_source(str(path))
    assert "\n" not in str(raised.value) and path.name in str(raised.value)


def test_keras_layout_test_split_lengths_are_checked(tmp_path):
    x, y = arrays(5)
    np.savez(tmp_path / "k.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:5])
    with pytest.raises(DataError, match=r"k\.npz \(test\): 4 images but 5 labels"):
        load_source(str(tmp_path / "k.npz"))


def test_a_folder_named_like_an_array_file_is_called_a_folder(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(DataError, match=r"d\.npz: is a folder") as raised:
        load_source(str(tmp_path / "d.npz"))
    assert "no such file" not in str(raised.value)


@pytest.mark.parametrize(
    "content, said",
    [
        (b"images,labels\n1,2\n", "not an .npz at all"),
        (None, "single .npy array"),
    ],
)
def test_a_file_that_is_not_an_npz_says_so_not_pickled(tmp_path, content, said):
    path = tmp_path / "t.npz"
    if content is None:
        with open(path, "wb") as handle:
            np.save(handle, arrays()[0])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=said) as raised:
        load_source(str(path))
    assert "pickled" not in str(raised.value)


def test_a_text_file_named_h5_is_not_an_hdf5_file(tmp_path):
    path = tmp_path / "t.h5"
    path.write_text("hello")
    with pytest.raises(DataError, match="not an HDF5 file"):
        load_source(str(path))


def test_an_unreadable_image_folder_is_one_clear_error(tmp_path, monkeypatch):
    from pathlib import Path

    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
        Image.new("L", (4, 4)).save(tmp_path / "set" / name / "x.png")
    real = Path.rglob

    def rglob(self, pattern):  # what a class folder without read permission gives
        if self.name == "b":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, pattern)

    monkeypatch.setattr(Path, "rglob", rglob)
    with pytest.raises(DataError, match=r"set/b: cannot read \(.*Permission denied"):
        load_source(str(tmp_path / "set"))
