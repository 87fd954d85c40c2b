"""ImageFolder trees, listed up front and decoded lazily on every core.

Layouts: ``train/<class>/*`` with ``test/<class>/*`` (or ``val/<class>/*`` when there is
no ``test/`` with class folders), or ``<class>/*`` alone, split per class by the seeded
80/20 rule. Files are found recursively in each class folder, in sorted path order
(hidden files and other suffixes ignored), as habactl.data.folder reads them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from habactl.data.folder import IMAGE_SUFFIXES
from habactl.data.split import split_class
from habactl.store.layout import SPLITS, StoreError
from habactl.store.sources.base import Header, Source, chunk_images
from habactl.store.sources.decode import BadImage, Rule, decode_file, first_rule, open_image
from habactl.store.writer import Piece


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(class_dir: Path) -> list[Path]:
    return [
        file
        for file in sorted(class_dir.rglob("*"))
        if not file.name.startswith(".")
        and file.suffix.lower() in IMAGE_SUFFIXES
        and file.is_file()
    ]


def _layout(root: Path) -> tuple[str, Path | None, Path | None]:
    """(description, train folder, held-out folder); folders None for one tree."""
    train = root / "train"
    held = [root / n for n in ("test", "val") if (root / n).is_dir() and _class_dirs(root / n)]
    if train.is_dir():
        if not held:
            raise StoreError(
                f"{root}: has train/ but no test/ or val/ with class folders; give one, or "
                f"only class folders (then 80/20 per class)"
            )
        return f"train/ and {held[0].name}/", train, held[0]
    if held:
        raise StoreError(f"{root}: has {held[0].name}/ but no train/; give both, or only classes")
    return "class folders, 80/20 per class", None, None


class FolderSource(Source):
    """An ImageFolder tree; ``workers`` processes decode (0: in this process)."""

    def __init__(
        self,
        root: Path,
        *,
        mode: str | None,
        resolution: int | None,
        workers: int,
        skip_bad: bool,
    ) -> None:
        if not root.is_dir():
            raise StoreError(f"{root}: not a folder")
        self.workers, self.skip_bad = workers, skip_bad
        layout, train_dir, held_dir = _layout(root)
        base = train_dir or root
        classes = _class_dirs(base)
        if len(classes) < 2:
            raise StoreError(f"{base}: needs at least 2 class folders, found {len(classes)}")
        train = [_files(base / name) for name in classes]
        for name, files in zip(classes, train, strict=True):
            if not files:
                raise StoreError(
                    f"{base / name}: empty class folder (no {', '.join(sorted(IMAGE_SUFFIXES))} "
                    f"files); remove it or add images"
                )
        if held_dir is not None:
            extra = sorted(set(_class_dirs(held_dir)) - set(classes))
            if extra:
                raise StoreError(f"{held_dir / extra[0]}: class folder not among the train classes")
            self.files = {"train": train, "test": [_files(held_dir / n) for n in classes]}
        else:
            self.files = {"train": [], "test": []}
            for cls, files in enumerate(train):
                kept, held = split_class(cls, len(files))
                self.files["train"].append([files[i] for i in kept])
                self.files["test"].append([files[i] for i in held])
        self.rule = self._first_rule(mode, resolution)
        self._skipped: dict[tuple[str, int], list[str]] = {}
        counts = {s: [len(f) for f in self.files[s]] for s in SPLITS}
        name = root.resolve().name
        self.header = Header(
            name=name,
            classes=classes,
            image_shape=self.rule.shape,
            is_digits=False,
            counts=counts,
            description={"kind": "image-folder", "name": name, "layout": layout},
            identity={"kind": "image-folder", "path": str(root.resolve()), **self._listing()},
        )

    def _first_rule(self, mode: str | None, resolution: int | None) -> Rule:
        """The first file that decodes sets the mode and size every other must have."""
        for files in self.files["train"]:
            for file in files:
                try:
                    image = open_image(str(file))
                except BadImage:
                    if self.skip_bad:
                        continue
                    raise
                return first_rule(image, str(file), mode, resolution)
        raise StoreError("no train image decodes")

    def _listing(self) -> dict:
        """A digest of every file's path, size and modification time: a resumed prepare
        must read the very same files."""
        digest, count = hashlib.sha256(), 0
        for split in SPLITS:
            for files in self.files[split]:
                for file in files:
                    stat = file.stat()
                    digest.update(f"{split}\0{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
                    count += 1
        return {"files": count, "listing": digest.hexdigest()}

    def pieces(self, split: str, first_class: int) -> Iterator[Piece]:
        from torch.utils.data import DataLoader

        items = [
            (cls, str(file))
            for cls in range(first_class, len(self.files[split]))
            for file in self.files[split][cls]
        ]
        if not items:
            return
        # Small enough batches that every worker gets several, large ones otherwise.
        batch = max(1, min(chunk_images(self.rule.shape), len(items) // (4 * max(1, self.workers))))
        loader: DataLoader = DataLoader(
            _Decode(items, self.rule),  # type: ignore[arg-type]  # a map-style dataset
            batch_size=batch,
            num_workers=self.workers,
            collate_fn=_as_list,
        )
        for results in loader:
            yield from self._group(split, results)

    def _group(self, split: str, results: list) -> Iterator[Piece]:
        """Consecutive images of one class as one piece; errors raised or skipped."""
        current, images = -1, list[np.ndarray]()
        for cls, array, error, bad in results:
            if error is not None:
                if not (bad and self.skip_bad):
                    raise StoreError(error)
                self._skipped.setdefault((split, cls), []).append(error)
                continue
            if cls != current and images:
                yield current, np.stack(images)
                images = []
            current = cls
            images.append(array)
        if images:
            yield current, np.stack(images)

    def skipped(self, split: str, cls: int) -> list[str]:
        return self._skipped.get((split, cls), [])


class _Decode:
    """A map-style dataset over (class, file); each item is (class, array | None,
    error | None, skippable), so that a worker's error reaches the main process as one
    line, not as a re-raised traceback."""

    def __init__(self, items: list[tuple[int, str]], rule: Rule) -> None:
        self.items, self.rule = items, rule

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None, bool]:
        cls, file = self.items[i]
        try:
            return cls, decode_file(file, self.rule), None, False
        except StoreError as error:
            return cls, None, str(error), isinstance(error, BadImage)


def _as_list(batch: list) -> list:
    return batch
