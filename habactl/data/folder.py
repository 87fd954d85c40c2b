"""ImageFolder directories: class folders of image files, optionally under train/ and test/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from habactl.data.base import DataError, DataSource, LabeledImages, make_source, reason
from habactl.data.split import split_per_class

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
# Modes read as they are, and modes converted because no information is lost.
_CHANNELS = {"L": 1, "RGB": 3}
_CONVERT = {"1": "L", "P": "RGB"}


def load_folder(path: str | Path) -> DataSource:
    """An ImageFolder directory as a DataSource.

    Layout A: ``train/<class>/*`` and ``test/<class>/*``; classes are the train class
    folders, sorted by name. Layout B: ``<class>/*`` directly, split by the seeded
    per-class 80/20 rule. Image files are found recursively in each class folder and
    read in sorted path order; hidden files and other suffixes are ignored.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        present, missing = ("train", "test") if has_train else ("test", "train")
        raise DataError(
            f"{root}: has {present}/ but no {missing}/; give both, or only class folders"
        )
    reader = _Reader()
    if has_train:
        classes = _class_dirs(root / "train")
        train = _read_split(root / "train", classes, reader)
        test = _read_split(root / "test", classes, reader)
    else:
        classes = _class_dirs(root)
        train, test = split_per_class(_read_split(root, classes, reader))
    return make_source(root.resolve().name, classes, train, test, is_digits=False)


def _class_dirs(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{folder}: no class folders")
    return names


def _read_split(folder: Path, classes: list[str], reader: _Reader) -> LabeledImages:
    index = {name: i for i, name in enumerate(classes)}
    for extra in _class_dirs(folder):
        if extra not in index:
            raise DataError(f"{folder / extra}: class folder not among the train classes")
    pixels, labels = [], []
    for name in classes:
        class_dir = folder / name
        if not class_dir.is_dir():
            continue  # a test split may lack a class; an empty train class is caught later
        for file in sorted(class_dir.rglob("*")):
            if (
                file.name.startswith(".")
                or file.suffix.lower() not in IMAGE_SUFFIXES
                or not file.is_file()
            ):
                continue
            pixels.append(reader.read(file))
            labels.append(index[name])
    if not pixels:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    array = np.stack(pixels)  # (N, H, W, C) uint8
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
    return LabeledImages(images, torch.tensor(labels, dtype=torch.int64))


class _Reader:
    """Reads images and insists that all share the first image's size and mode."""

    def __init__(self) -> None:
        self.reference: tuple[Path, tuple[int, int], str] | None = None

    def read(self, file: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(file) as img:
                img.load()
                mode = _CONVERT.get(img.mode, img.mode)
                if mode not in _CHANNELS:
                    raise DataError(
                        f"{file}: image mode {img.mode} is not supported; "
                        "save it as L (grayscale) or RGB"
                    )
                img = img.convert(mode) if mode != img.mode else img
                array = np.asarray(img, dtype=np.uint8)
                size = img.size
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"{file}: cannot read image ({reason(exc)})") from exc
        if self.reference is None:
            self.reference = (file, size, mode)
        elif (size, mode) != self.reference[1:]:
            ref_file, ref_size, ref_mode = self.reference
            raise DataError(
                f"{file}: image is {size[0]}x{size[1]} {mode} but {ref_file} is "
                f"{ref_size[0]}x{ref_size[1]} {ref_mode}; all images must share one size and mode"
            )
        return array.reshape(array.shape[0], array.shape[1], _CHANNELS[mode])
