"""habactl prepare from every kind of source: the same pixels give the same store, the
resize rule is torchvision's, and bad input is one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.store import open_store
from helpers import one_error_line, write_fake_mnist

rng = np.random.default_rng(7)
X = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)  # HWC, as most files hold them
Y = np.arange(50) % 5
XT = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
YT = np.arange(10) % 5


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def prepare(source, out: Path, *extra) -> Path:
    result = run("prepare", source, "-o", out, "-q", *extra)
    assert result.exit_code == 0, result.output
    return out


def pngs(folder: Path, count: int, size=(12, 10), mode="RGB", suffix=".png") -> None:
    folder.mkdir(parents=True)
    channels = 3 if mode == "RGB" else 1
    for i in range(count):
        array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        from PIL import Image

        Image.fromarray(array.squeeze()).convert(mode).save(folder / f"{i:03d}{suffix}")


# --- array files --------------------------------------------------------------------------


def test_every_array_file_kind_gives_the_same_store(tmp_path):
    import h5py

    np.savez(tmp_path / "stored.npz", x_train=X, y_train=Y, x_test=XT, y_test=YT)
    np.savez_compressed(tmp_path / "packed.npz", x_train=X, y_train=Y, x_test=XT, y_test=YT)
    # Float CHW in [0, 1] holds the same pixels.
    chw = {k: v.transpose(0, 3, 1, 2).astype(np.float32) / 255 for k, v in (("x", X), ("xt", XT))}
    np.savez(tmp_path / "float.npz", x_train=chw["x"], y_train=Y, x_test=chw["xt"], y_test=YT)
    with h5py.File(tmp_path / "groups.h5", "w") as f:
        f["train/images"], f["train/labels"] = X, Y
        f["test/images"], f["test/labels"] = XT, YT
    (tmp_path / "npy").mkdir()
    for name, array in (("x_train", X), ("y_train", Y), ("x_test", XT), ("y_test", YT)):
        np.save(tmp_path / "npy" / f"{name}.npy", array)
    stores = [
        prepare(tmp_path / name, tmp_path / f"{name}.store")
        for name in ("stored.npz", "packed.npz", "float.npz", "groups.h5", "npy")
    ]
    prints = {open_store(s).fingerprint for s in stores}
    assert len(prints) == 1
    store = open_store(stores[0])
    np.testing.assert_array_equal(
        store.images("train"), X[np.argsort(Y, kind="stable")].transpose(0, 3, 1, 2)
    )
    np.testing.assert_array_equal(store.labels("test"), np.sort(YT))
    # The compressed member was unpacked beside the store and is gone again.
    assert sorted(os.listdir(stores[1])) == sorted(os.listdir(stores[0]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_one_array_pair_is_split_80_20_per_class_as_load_source_does(tmp_path):
    import h5py

    from habactl.data import load_source

    np.savez(tmp_path / "one.npz", images=X, labels=Y)
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["images"], f["labels"] = X, Y
    np.save(tmp_path / "images.npy", X)
    np.save(tmp_path / "labels.npy", Y)
    stores = [
        prepare(tmp_path / "one.npz", tmp_path / "a.store"),
        prepare(tmp_path / "one.h5", tmp_path / "b.store"),
        prepare(tmp_path / "images.npy", tmp_path / "c.store", "--labels", tmp_path / "labels.npy"),
    ]
    assert len({open_store(s).fingerprint for s in stores}) == 1
    source, store = load_source(tmp_path / "one.npz"), open_store(stores[0])
    for split in ("train", "test"):
        part = source.split(split)
        order = np.argsort(part.labels.numpy(), kind="stable")
        expected = np.rint(part.images.numpy()[order] * 255).astype(np.uint8)
        np.testing.assert_array_equal(store.images(split), expected)


def test_an_uncompressed_npz_member_is_read_where_it_lies(tmp_path):
    from habactl.store.sources import Options
    from habactl.store.sources.files import FileRows, open_npz

    np.savez(tmp_path / "s.npz", images=X, labels=Y)
    with open_npz(
        tmp_path / "s.npz",
        images_key="images",
        labels_key="labels",
        scratch=tmp_path,
        options=Options(),
    ) as source:
        images = source.arrays["train"]
        assert isinstance(images, FileRows) and images.path == tmp_path / "s.npz"
        np.testing.assert_array_equal(images[0:50], X)
        np.testing.assert_array_equal(images[np.array([1, 2, 3, 7, 9, 10])], X[[1, 2, 3, 7, 9, 10]])


def test_array_flags_resize_and_convert(tmp_path):
    from PIL import Image

    np.savez(tmp_path / "a.npz", images=X, labels=Y)
    gray = open_store(prepare(tmp_path / "a.npz", tmp_path / "g.store", "--mode", "L"))
    assert gray.image_shape == (1, 8, 8)
    first = X[np.argsort(Y, kind="stable")][0]
    np.testing.assert_array_equal(
        gray.images("train")[0, 0], np.asarray(Image.fromarray(first).convert("L"))
    )
    small = open_store(prepare(tmp_path / "a.npz", tmp_path / "r.store", "--resolution", "4"))
    assert small.image_shape == (3, 4, 4)
    assert small.settings["resolution"] == 4 and "centre" in small.settings["resize"]
    line = one_error_line(run("prepare", tmp_path / "a.npz", "-o", tmp_path / "x", "--labels", "y"))
    assert "--labels does not apply" in line


# --- the resize rule ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(40, 30), (30, 41), (17, 17), (5, 9)])
def test_resize_is_torchvision_resize_then_center_crop(size):
    from PIL import Image
    from torchvision import transforms

    from habactl.store.pixels import resize_crop

    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    reference = transforms.Compose([transforms.Resize(12), transforms.CenterCrop(12)])(image)
    ours = resize_crop(image, 12)
    assert ours.size == (12, 12)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))


# --- image folders --------------------------------------------------------------------------


def test_image_folder_layouts_hold_the_files_pixels(tmp_path):
    from habactl.data import load_source

    for cls in ("cat", "dog", "eel"):
        pngs(tmp_path / "tt" / "train" / cls, 4)
        pngs(tmp_path / "tt" / "test" / cls, 2)
        pngs(tmp_path / "one" / cls, 6)
    for name in ("tt", "one"):
        store = open_store(prepare(tmp_path / name, tmp_path / f"{name}.store", "--workers", "0"))
        source = load_source(tmp_path / name)
        assert store.classes == ["cat", "dog", "eel"] and store.image_shape == (3, 10, 12)
        for split in ("train", "test"):
            expected = np.rint(source.split(split).images.numpy() * 255).astype(np.uint8)
            np.testing.assert_array_equal(store.images(split), expected)  # already class-sorted
    # val/ serves as the test split when there is no test/.
    os.rename(tmp_path / "tt" / "test", tmp_path / "tt" / "val")
    store = open_store(prepare(tmp_path / "tt", tmp_path / "val.store", "--workers", "0"))
    assert store.fingerprint == open_store(tmp_path / "tt.store").fingerprint
    assert store.source["layout"] == "train/ and val/"


@pytest.mark.slow
def test_decoding_workers_write_the_same_bytes(tmp_path):
    for cls in range(4):
        pngs(tmp_path / "set" / f"c{cls}", 15, suffix=".jpg")
    one = prepare(tmp_path / "set", tmp_path / "w0.store", "--workers", "0")
    two = prepare(tmp_path / "set", tmp_path / "w2.store", "--workers", "2")
    for name in ("train.u8", "test.u8"):
        assert (one / name).read_bytes() == (two / name).read_bytes()


def test_mixed_sizes_need_a_resolution(tmp_path):
    pngs(tmp_path / "set" / "a", 3, size=(12, 10))
    pngs(tmp_path / "set" / "b", 3, size=(9, 14))
    line = one_error_line(
        run("prepare", tmp_path / "set", "-o", tmp_path / "s", "--workers", "0", "-q")
    )
    assert str(tmp_path / "set" / "b" / "000.png") in line and "--resolution" in line
    assert not (tmp_path / "s").exists() or not (tmp_path / "s" / "index.json").exists()
    store = open_store(
        prepare(tmp_path / "set", tmp_path / "r.store", "--resolution", "8", "--workers", "0")
    )
    assert store.image_shape == (3, 8, 8)


def test_grayscale_beside_rgb_is_refused_unless_a_mode_is_given(tmp_path):
    pngs(tmp_path / "set" / "a", 3)
    pngs(tmp_path / "set" / "b", 3, mode="L")
    line = one_error_line(
        run("prepare", tmp_path / "set", "-o", tmp_path / "s", "--workers", "0", "-q")
    )
    assert str(tmp_path / "set" / "b" / "000.png") in line and "--mode" in line
    rgb = open_store(prepare(tmp_path / "set", tmp_path / "rgb", "--mode", "RGB", "--workers", "0"))
    gray = open_store(prepare(tmp_path / "set", tmp_path / "l", "--mode", "L", "--workers", "0"))
    assert rgb.image_shape == (3, 10, 12) and gray.image_shape == (1, 10, 12)
    grey_as_rgb = rgb.images("train")[rgb.offsets("train")[1]]
    assert (grey_as_rgb[0] == grey_as_rgb[1]).all() and (grey_as_rgb[1] == grey_as_rgb[2]).all()


def test_an_image_that_does_not_decode_is_named_or_skipped(tmp_path):
    pngs(tmp_path / "set" / "a", 5)
    pngs(tmp_path / "set" / "b", 5)
    broken = tmp_path / "set" / "b" / "002.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    line = one_error_line(
        run("prepare", tmp_path / "set", "-o", tmp_path / "s", "--workers", "0", "-q")
    )
    assert str(broken) in line and "cannot read image" in line
    # The failed run left an unfinished store; other settings do not continue it.
    args = ("prepare", tmp_path / "set", "-o", tmp_path / "s", "--workers", "0", "--skip-bad")
    assert "--force to start over" in one_error_line(run(*args, "-q"))
    result = run(*args, "--force")
    assert result.exit_code == 0, result.output
    assert f"skipped {broken}" in result.stderr and "1 image skipped" in result.stderr
    store = open_store(tmp_path / "s")
    assert store.count("train") + store.count("test") == 9
    assert store.settings["skip_bad"] is True


def test_an_empty_class_folder_is_refused(tmp_path):
    pngs(tmp_path / "set" / "a", 3)
    (tmp_path / "set" / "b").mkdir()
    (tmp_path / "set" / "b" / "notes.txt").write_text("no images here")
    line = one_error_line(run("prepare", tmp_path / "set", "-o", tmp_path / "s"))
    assert str(tmp_path / "set" / "b") in line and "empty class folder" in line
    assert not (tmp_path / "s").exists()


def test_unknown_sources_and_files_are_one_line(tmp_path):
    assert "unknown data source" in one_error_line(run("prepare", "nope", "-o", tmp_path / "s"))
    (tmp_path / "a.csv").write_text("1,2")
    assert "unsupported file type" in one_error_line(
        run("prepare", tmp_path / "a.csv", "-o", tmp_path / "s")
    )
    np.save(tmp_path / "lonely.npy", X)
    assert "--labels" in one_error_line(
        run("prepare", tmp_path / "lonely.npy", "-o", tmp_path / "s")
    )
    assert not (tmp_path / "s").exists()


# --- Hugging Face datasets (optional) --------------------------------------------------------


def test_a_saved_hugging_face_dataset_and_its_parquet_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    images = [Image.fromarray(X[i]) for i in range(len(X))]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=list("vwxyz"))}
    )
    train = datasets.Dataset.from_dict({"img": images, "label": Y.tolist()}, features=features)
    test = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(a) for a in XT], "label": YT.tolist()}, features=features
    )
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "pq").mkdir()
    train.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    test.to_parquet(str(tmp_path / "pq" / "test-00000.parquet"))
    saved = open_store(prepare(tmp_path / "saved", tmp_path / "saved.store"))
    parquet = open_store(prepare(tmp_path / "pq", tmp_path / "pq.store"))
    assert saved.classes == list("vwxyz") and saved.fingerprint == parquet.fingerprint
    np.savez(tmp_path / "same.npz", x_train=X, y_train=Y, x_test=XT, y_test=YT)
    same = open_store(prepare(tmp_path / "same.npz", tmp_path / "same.store"))
    assert same.image_shape == saved.image_shape
    np.testing.assert_array_equal(same.images("train"), saved.images("train"))
    np.testing.assert_array_equal(same.images("test"), saved.images("test"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no cache left


# --- registry sets and where the store may go ---------------------------------------------------


def test_a_torchvision_set_is_stored_as_its_own_uint8_pixels(tmp_path):
    raw = write_fake_mnist(tmp_path / "root")
    store = open_store(prepare("mnist", tmp_path / "m.store", "--root", tmp_path / "root"))
    pixels = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8)
    np.testing.assert_array_equal(store.images("train").reshape(-1), pixels)  # class-sorted already
    assert store.is_digits and store.classes == [str(d) for d in range(10)]
    assert store.source == {"kind": "torchvision", "name": "mnist"}
    line = one_error_line(run("prepare", "digits", "-o", tmp_path / "d", "--root", tmp_path))
    assert "--root does not apply to digits" in line


def test_the_store_goes_neither_inside_its_source_nor_over_other_outputs(tmp_path):
    pngs(tmp_path / "set" / "a", 3)
    pngs(tmp_path / "set" / "b", 3)
    line = one_error_line(run("prepare", tmp_path / "set", "-o", tmp_path / "set" / "s.store"))
    assert "inside the source folder" in line
    assert sorted(os.listdir(tmp_path / "set")) == ["a", "b"]
    # A folder another habactl command wrote (expand's images) is replaced only with --force.
    images = tmp_path / "images"
    (images / "0").mkdir(parents=True)
    (images / "0" / "0.png").write_bytes(b"png")
    (images / ".habactl-output.json").write_text('{"kind": "habactl-output"}')
    assert "--force" in one_error_line(run("prepare", "digits", "-o", images))
    store = prepare("digits", images, "--force")
    assert sorted(os.listdir(store)) == [
        ".habactl-output.json",
        "index.json",
        "test.u8",
        "train.u8",
    ]
