"""A local Hugging Face dataset: a ``save_to_disk`` folder, or Parquet files, read
through the optional ``datasets`` package (``pip install 'habactl[hf]'``).

The image column is the first of feature type Image (else one named image or img), the
label column the first ClassLabel (else one named label or labels); class names come
from the ClassLabel. Splits: train and test (or validation); one split alone is split
80/20 per class. Parquet files are grouped into splits by their names' first word.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from habactl.data.arrays import class_names, labels_from_array
from habactl.data.base import reason
from habactl.store.layout import SPLITS, StoreError
from habactl.store.sources.arrays import split_members
from habactl.store.sources.base import Header, Source, chunk_images
from habactl.store.sources.decode import first_rule, to_array
from habactl.store.writer import Piece

HELD_OUT = ("test", "validation", "valid", "val")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise StoreError(
            "reading a Hugging Face dataset needs the datasets package: pip install 'habactl[hf]'"
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


class HFSource(Source):
    def __init__(self, path: Path, options: Any, scratch: Path) -> None:
        datasets = _datasets()
        self.cache: Path | None = None
        try:
            splits = self._load(datasets, path, scratch)
        except StoreError:
            self.close()
            raise
        except Exception as exc:  # datasets and pyarrow raise many kinds
            self.close()
            raise StoreError(f"{path}: cannot read the dataset ({reason(exc)})") from exc
        train = splits["train"]
        self.image_col, self.label_col = _columns(datasets, train.features, path)
        self.splits = splits
        labels = {s: _labels(d, self.label_col, f"{path} ({s})") for s, d in splits.items()}
        feature = train.features[self.label_col]
        raw = feature.names if isinstance(feature, datasets.ClassLabel) else None
        top = max(int(lab.max()) for lab in labels.values()) + 1
        classes = class_names(raw, top, str(path))
        self.members = split_members(labels, len(classes))
        first = train[int(self.members["train"][1][0][0])][self.image_col]
        self.rule = first_rule(
            first, f"{path} (train, first image)", options.mode, options.resolution
        )
        counts = {s: [len(m) for m in self.members[s][1]] for s in SPLITS}
        self.where = str(path)
        self.header = Header(
            name=path.name,
            classes=classes,
            image_shape=self.rule.shape,
            is_digits=False,
            counts=counts,
            description={"kind": "huggingface", "name": path.name, "splits": sorted(splits)},
            identity={"kind": "huggingface", "path": str(path.resolve()), **_identity(path)},
        )

    def _load(self, datasets: Any, path: Path, scratch: Path) -> dict[str, Any]:
        if path.is_dir() and not _parquet_files(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.Dataset):
                return {"train": loaded}
            return _pick(dict(loaded), path)
        files = _parquet_files(path) if path.is_dir() else [path]
        if not files:
            raise StoreError(f"{path}: no .parquet files")
        grouped: dict[str, list[str]] = {}
        for file in files:
            word = file.name.split("-")[0].split(".")[0].split("_")[0].lower()
            grouped.setdefault(word if word in ("train", *HELD_OUT) else "all", []).append(
                str(file)
            )
        if "all" in grouped or "train" not in grouped:
            grouped = {"train": [str(f) for f in files]}
        # Parquet is converted to Arrow once; that cache lives beside the store, briefly.
        self.cache = Path(tempfile.mkdtemp(prefix=f".{scratch.name}.hf-", dir=scratch.parent))
        loaded = datasets.load_dataset("parquet", data_files=grouped, cache_dir=str(self.cache))
        return _pick(dict(loaded), path)

    def pieces(self, split: str, first_class: int) -> Iterator[Piece]:
        array_split, members = self.members[split]
        data = self.splits[array_split]
        step = chunk_images(self.rule.shape)
        for cls in range(first_class, len(members)):
            rows = members[cls]
            for start in range(0, rows.size, step):
                chunk = rows[start : start + step].tolist()
                images = data[chunk][self.image_col]
                arrays = [
                    to_array(image, self.rule, f"{self.where} ({array_split}, row {row})")
                    for row, image in zip(chunk, images, strict=True)
                ]
                yield cls, np.stack(arrays)

    def close(self) -> None:
        if self.cache is not None:
            shutil.rmtree(self.cache, ignore_errors=True)
            self.cache = None


def open_hf(path: Path, *, options: Any, scratch: Path) -> HFSource:
    return HFSource(path, options, scratch)


def _parquet_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))


def _pick(splits: dict[str, Any], path: Path) -> dict[str, Any]:
    if "train" not in splits:
        raise StoreError(f"{path}: no train split (found: {', '.join(sorted(splits))})")
    held = [name for name in HELD_OUT if name in splits]
    return {"train": splits["train"], **({"test": splits[held[0]]} if held else {})}


def _columns(datasets: Any, features: Any, path: Path) -> tuple[str, str]:
    names = list(features)
    image = [n for n in names if isinstance(features[n], datasets.Image)]
    image = image or [n for n in names if n in ("image", "img")]
    label = [n for n in names if isinstance(features[n], datasets.ClassLabel)]
    label = label or [n for n in names if n in ("label", "labels")]
    if not image or not label:
        what = "an image" if not image else "a label"
        raise StoreError(f"{path}: no {what} column (columns: {', '.join(names)})")
    return image[0], label[0]


def _labels(data: Any, column: str, where: str) -> np.ndarray:
    return labels_from_array(np.asarray(data[column]), where).numpy()


def _identity(path: Path) -> dict:
    """Every file's size and modification time, so that a resume reads the same data."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    with contextlib.suppress(OSError):
        return {"files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    return {}
