"""Prepared stores: what is written is what is read, the fingerprint follows every byte,
and a store changed after preparing is refused in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.runtime.atomic import OutputError
from habactl.store import StoreError, is_store, open_store, verify_store, write_store
from helpers import one_error_line

CLASSES = ["ant", "bee", "cat"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def arrays(seed: int = 0, n: int = 40, shape=(3, 5, 4)):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % 3)  # shuffled: the store sorts by class
    return images, labels


def small_store(path: Path, seed: int = 0, **kwargs) -> Path:
    train = arrays(seed)
    test = arrays(seed + 100, n=9)
    return write_store(path, name="toy", classes=CLASSES, train=train, test=test, **kwargs)


def test_round_trip_keeps_each_class_in_order(tmp_path):
    (images, labels), (test_images, test_labels) = arrays(0), arrays(100, n=9)
    path = write_store(
        tmp_path / "s",
        name="toy",
        classes=CLASSES,
        train=(images, labels),
        test=(test_images, test_labels),
    )
    store = open_store(path)
    assert is_store(path) and not is_store(tmp_path)
    assert store.name == "toy" and store.classes == CLASSES and store.num_classes == 3
    assert store.image_shape == (3, 5, 4) and not store.is_digits
    order = np.argsort(labels, kind="stable")
    assert store.counts("train") == np.bincount(labels).tolist()
    assert store.offsets("train") == [0, *np.cumsum(np.bincount(labels))[:-1].tolist()]
    np.testing.assert_array_equal(store.images("train"), images[order])
    np.testing.assert_array_equal(store.labels("train"), labels[order])
    test_order = np.argsort(test_labels, kind="stable")
    np.testing.assert_array_equal(store.images("test"), test_images[test_order])
    assert store.labels("test").dtype == np.int64
    # read(): the order asked for, repeats included.
    wanted = [7, 0, 7, 39]
    got = store.read("train", wanted)
    assert got.dtype.is_floating_point is False and tuple(got.shape) == (4, 3, 5, 4)
    np.testing.assert_array_equal(got.numpy(), images[order][wanted])
    with pytest.raises(IndexError):
        store.read("train", [40])
    # Statistics over the train split, pixels in [0, 1].
    pixels = images.astype(np.float64) / 255
    np.testing.assert_allclose(store.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(store.std, pixels.std(axis=(0, 2, 3)), rtol=1e-9)
    assert store.describe() == {
        "name": "toy",
        "fingerprint": store.fingerprint,
        "classes": 3,
        "image": {"channels": 3, "height": 5, "width": 4},
        "train": 40,
        "test": 9,
    }
    assert not store.images("train").flags.writeable
    with open_store(path) as again:
        assert again.read("test", [0]).shape[0] == 1


def test_torch_tensors_are_accepted_and_float_images_are_not(tmp_path):
    import torch

    images, labels = arrays(0)
    path = write_store(
        tmp_path / "t",
        name="toy",
        classes=CLASSES,
        train=(torch.from_numpy(images), torch.from_numpy(labels)),
        test=arrays(1, n=6),
    )
    assert open_store(path).count("train") == 40
    with pytest.raises(StoreError, match="uint8"):
        write_store(
            tmp_path / "f",
            name="toy",
            classes=CLASSES,
            train=(images.astype(np.float32), labels),
            test=arrays(1, n=6),
        )
    assert not (tmp_path / "f").exists()


def test_the_fingerprint_follows_every_byte_and_not_the_name(tmp_path):
    first = open_store(small_store(tmp_path / "a")).fingerprint
    again = open_store(small_store(tmp_path / "b")).fingerprint
    assert first == again and first.startswith("sha256:")
    images, labels = arrays(0)
    images[17, 2, 4, 3] ^= 1
    changed = write_store(
        tmp_path / "c",
        name="other",
        classes=CLASSES,
        train=(images, labels),
        test=arrays(100, n=9),
    )
    assert open_store(changed).fingerprint != first
    renamed = write_store(
        tmp_path / "d",
        name="other",
        classes=["ant", "bee", "cow"],
        train=arrays(0),
        test=arrays(100, n=9),
    )
    assert open_store(renamed).fingerprint != first


def test_a_store_edited_after_preparing_is_refused_in_one_line(tmp_path):
    path = small_store(tmp_path / "s")
    data = path / "train.u8"
    original = data.read_bytes()
    edited = bytearray(original)
    edited[100] ^= 0xFF
    data.write_bytes(bytes(edited))
    with pytest.raises(StoreError, match=r"changed after .*habactl prepare --verify") as caught:
        open_store(path)
    assert "\n" not in str(caught.value)
    problems = verify_store(path)
    assert len(problems) == 1 and "class 'ant' (train)" in problems[0]
    line = one_error_line(run("prepare", "--verify", path))
    assert "train.u8" in line and "differs" in line
    # The same bytes again (a copy, say): --verify passes and the store opens again.
    data.write_bytes(original)
    with pytest.raises(StoreError):
        open_store(path)
    result = run("prepare", "--verify", path)
    assert result.exit_code == 0, result.output
    assert "intact" in result.stderr
    assert open_store(path).count("train") == 40


def test_a_truncated_data_file_or_an_edited_index_is_refused(tmp_path):
    path = small_store(tmp_path / "s")
    with open(path / "test.u8", "r+b") as handle:
        handle.truncate(60)
    with pytest.raises(StoreError, match="holds 60 bytes, not 540"):
        open_store(path)
    other = small_store(tmp_path / "o")
    index = json.loads((other / "index.json").read_text())
    index["splits"]["train"]["counts"] = [12, 14, 14]
    (other / "index.json").write_text(json.dumps(index))
    with pytest.raises(StoreError, match="count and offsets disagree"):
        open_store(other)
    index["splits"]["train"]["count"], index["splits"]["train"]["offsets"] = 40, [0, 12, 26]
    (other / "index.json").write_text(json.dumps(index))
    with pytest.raises(StoreError, match="fingerprint does not match"):
        open_store(other)
    index["splits"]["train"]["file"] = "../elsewhere.u8"
    (other / "index.json").write_text(json.dumps(index))
    with pytest.raises(StoreError, match="must be 'train.u8'"):
        open_store(other)


def test_what_is_not_a_store_says_so(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "missing")
    with pytest.raises(StoreError, match="not a store"):
        open_store(tmp_path)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "prepare-state.json").write_text("{}")
    with pytest.raises(StoreError, match="incomplete.*rerun the same prepare command"):
        open_store(tmp_path / "half")


def test_write_store_never_replaces_a_foreign_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="did not write"):
        small_store(mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep"
    path = small_store(tmp_path / "s")
    with pytest.raises(OutputError, match="--force"):
        small_store(path, seed=5)
    small_store(path, seed=5, force=True)
    assert open_store(path).fingerprint != open_store(small_store(tmp_path / "t")).fingerprint


# --- habactl prepare ----------------------------------------------------------------------


def uint8_of(images) -> np.ndarray:
    return np.rint(images.numpy().astype(np.float64) * 255).astype(np.uint8)


def test_prepare_digits_holds_the_source_pixels(tmp_path):
    from habactl.data import load_source

    result = run("prepare", "digits", "-o", tmp_path / "digits.store", "-q")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and "fingerprint sha256:" in result.stderr
    store = open_store(tmp_path / "digits.store")
    source = load_source("digits")
    assert store.is_digits and store.classes == source.classes
    assert store.counts("train") == source.per_class_counts("train")
    assert store.counts("test") == source.per_class_counts("test")
    order = np.argsort(source.train.labels.numpy(), kind="stable")
    np.testing.assert_array_equal(store.images("train"), uint8_of(source.train.images)[order])
    np.testing.assert_allclose(store.mean, source.mean(), atol=2e-3)
    assert (tmp_path / "digits.store" / ".habactl-output.json").is_file()
    assert not (tmp_path / "digits.store" / "prepare-state.json").exists()
    # Again: refused without --force; with it, the same bytes.
    line = one_error_line(run("prepare", "digits", "-o", tmp_path / "digits.store"))
    assert "--force" in line
    before = (tmp_path / "digits.store" / "train.u8").read_bytes()
    assert run("prepare", "digits", "-o", tmp_path / "digits.store", "--force", "-q").exit_code == 0
    assert (tmp_path / "digits.store" / "train.u8").read_bytes() == before
    assert open_store(tmp_path / "digits.store").fingerprint == store.fingerprint


def test_prepare_npz_with_and_without_a_test_split(tmp_path):
    (x, y), (xt, yt) = arrays(3, n=30, shape=(8, 8, 3)), arrays(4, n=6, shape=(8, 8, 3))
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    result = run("prepare", tmp_path / "keras.npz", "-o", tmp_path / "k.store", "-q")
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "k.store")
    assert store.image_shape == (3, 8, 8)  # HWC arrays are stored CHW
    order = np.argsort(y, kind="stable")
    np.testing.assert_array_equal(store.images("train"), x[order].transpose(0, 3, 1, 2))
    assert store.count("test") == 6 and store.name == "keras.npz"
    # One array pair: the seeded 80/20 split per class, as load_source makes it.
    from habactl.data import load_source

    np.savez(tmp_path / "one.npz", images=x.astype(np.float32) / 255, labels=y)
    assert run("prepare", tmp_path / "one.npz", "-o", tmp_path / "o.store", "-q").exit_code == 0
    store, source = open_store(tmp_path / "o.store"), load_source(tmp_path / "one.npz")
    assert store.counts("test") == source.per_class_counts("test")
    test_order = np.argsort(source.test.labels.numpy(), kind="stable")
    np.testing.assert_array_equal(store.images("test"), uint8_of(source.test.images)[test_order])


def test_prepare_refuses_bad_input_and_foreign_folders_in_one_line(tmp_path):
    line = one_error_line(run("prepare", tmp_path / "missing.npz", "-o", tmp_path / "m.store"))
    assert "missing.npz" in line
    assert not (tmp_path / "m.store").exists()
    (tmp_path / "text.npz").write_text("not an archive")
    assert "not an .npz" in one_error_line(
        run("prepare", tmp_path / "text.npz", "-o", tmp_path / "t.store")
    )
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"x")
    line = one_error_line(run("prepare", "digits", "-o", mine, "--force"))
    assert "did not write" in line
    assert os.listdir(mine) == ["photo.jpg"]
    assert "-o" in one_error_line(run("prepare", "digits"))
    assert "--mode" in one_error_line(
        run("prepare", "digits", "-o", tmp_path / "x", "--mode", "CMYK")
    )
