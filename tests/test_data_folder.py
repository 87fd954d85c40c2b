"""ImageFolder directories built from tiny PNG fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from habactl.data import DataError, load_source
from source_contract import SourceContract


def write_images(folder: Path, count: int, size=(6, 5), mode="L", seed=0) -> None:
    """``count`` random PNGs of ``size`` (width, height) in ``mode`` under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(
            folder / f"{i:03d}.png"
        )


class TestSplitLayout(SourceContract):
    """train/<class>/ and test/<class>/, RGB."""

    classes, shape, train_size, test_size = 3, (3, 5, 6), 12, 6

    def write(self, folder):
        for c, name in enumerate(["cat", "dog", "emu"]):
            write_images(folder / "train" / name, 4, mode="RGB", seed=c)
            write_images(folder / "test" / name, 2, mode="RGB", seed=10 + c)
        (folder / "train" / "cat" / "notes.txt").write_text("not an image")
        return str(folder)

    def test_classes_sorted_and_pixels_kept(self, source, spec):
        assert source.classes == ["cat", "dog", "emu"]
        first = np.asarray(Image.open(Path(spec) / "train" / "cat" / "000.png"))
        assert np.allclose(source.train.images[0].permute(1, 2, 0).numpy() * 255, first)


class TestClassFolders(SourceContract):
    """<class>/ directly, grayscale, split 80/20 per class by the seeded rule."""

    classes, shape, train_size, test_size = 2, (1, 5, 6), 8, 2

    def write(self, folder):
        write_images(folder / "a", 5, seed=1)
        write_images(folder / "b", 5, seed=2)
        return str(folder)

    def test_per_class_split(self, source):
        assert source.per_class_counts("train") == [4, 4]
        assert source.per_class_counts("test") == [1, 1]


def test_mismatched_size_names_the_file(tmp_path):
    write_images(tmp_path / "a", 3)
    write_images(tmp_path / "b", 3)
    Image.new("L", (7, 7)).save(tmp_path / "b" / "odd.png")
    with pytest.raises(DataError, match=r"b/odd\.png: image is 7x7 L but .* is 6x5 L"):
        load_source(str(tmp_path))


def test_mismatched_mode_names_the_file(tmp_path):
    write_images(tmp_path / "a", 3)
    write_images(tmp_path / "b", 3, mode="RGB")
    with pytest.raises(DataError, match=r"b/000\.png: image is 6x5 RGB"):
        load_source(str(tmp_path))


def test_empty_class_is_named(tmp_path):
    write_images(tmp_path / "train" / "a", 2)
    (tmp_path / "train" / "b").mkdir()
    write_images(tmp_path / "test" / "a", 1)
    with pytest.raises(DataError, match="class 'b' has no train images"):
        load_source(str(tmp_path))


def test_corrupt_image_names_the_file(tmp_path):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 2)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        load_source(str(tmp_path))


def test_test_class_unknown_to_train(tmp_path):
    write_images(tmp_path / "train" / "a", 2)
    write_images(tmp_path / "train" / "b", 2)
    write_images(tmp_path / "test" / "zebra", 1)
    with pytest.raises(DataError, match="zebra: class folder not among the train classes"):
        load_source(str(tmp_path))


def test_train_without_test(tmp_path):
    write_images(tmp_path / "train" / "a", 2)
    with pytest.raises(DataError, match="has train/ but no test/"):
        load_source(str(tmp_path))


def test_unsupported_mode(tmp_path):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 1)
    Image.new("RGBA", (6, 5)).save(tmp_path / "b" / "alpha.png")
    with pytest.raises(DataError, match="alpha.png: image mode RGBA is not supported"):
        load_source(str(tmp_path))
