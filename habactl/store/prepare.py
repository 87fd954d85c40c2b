"""``prepare``: a source decoded once into a store, class by class, resumably.

The output is checked before anything is read; the source is opened (listed, its
headers read) before the folder is made; then each split is written class by class
(see writer.py for what makes it resumable) and index.json is written last.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from habactl.runtime import atomic
from habactl.store.layout import INDEX, SPLITS, STATE, Index, StoreError
from habactl.store.sources import Options, open_source
from habactl.store.writer import StoreWriter, read_state

WRITTEN_BY = "prepare"


@dataclass(frozen=True)
class PrepareResult:
    """What one prepare run did."""

    path: Path
    index: Index
    written: int  # images decoded and written by this run
    resumed: int  # images already there from an earlier, interrupted run
    skipped: list[str]
    seconds: float


def check_target(target: Path, force: bool) -> str:
    """Refuse, before any work, an output that cannot be used; what to do with it:
    ``new`` (no folder yet), ``resume`` (an unfinished prepare) or ``fresh``."""
    check = atomic.check_folder_target
    check(target, True)  # a foreign folder, the current folder, a file: refused, --force or not
    path = atomic.absolute(target)
    if not path.exists():
        return "new"
    if (path / INDEX).exists():
        if not force:
            raise atomic.OutputExists(f"{target} is a prepared store; pass --force to replace it")
        return "fresh"
    if (path / STATE).exists():
        return "resume"
    if os.listdir(path) and not force:  # another output of habactl's (expand's images)
        raise atomic.OutputExists(
            f"{target} exists (written by habactl); pass --force to replace it"
        )
    return "fresh"


def check_apart(spec: str, target: Path) -> None:
    """A store inside the folder it is prepared from would be read as a class folder."""
    source, store = atomic.absolute(spec), atomic.absolute(target)
    if os.path.isdir(source) and (store == source or source in store.parents):
        raise StoreError(f"{target} lies inside the source folder {spec}; put the store elsewhere")


def prepare(
    spec: str,
    target: str | os.PathLike[str],
    *,
    options: Options | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    started: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Decode ``spec`` into a store at ``target``. ``progress(done, total)`` follows the
    images; ``started(text)`` is told what is being prepared once the source is open."""
    options = options or Options()
    begun = time.perf_counter()
    folder = atomic.absolute(target)
    status = check_target(Path(target), force)
    check_apart(spec, Path(target))
    with open_source(spec, options, scratch=folder) as source:
        header = source.header
        empty = [header.classes[i] for i, n in enumerate(header.counts["train"]) if n == 0]
        if empty:
            raise StoreError(f"{spec}: class {empty[0]!r} has no train images")
        if status == "new":  # only now: a source that cannot be read leaves nothing behind
            _make_folder(folder)
        elif status == "fresh":  # habactl's own folder (checked above), replaced by --force
            _empty(folder)
        if not atomic.is_ours(folder):
            atomic.write_text(folder / atomic.MARKER, _marker())
        identity = {"source": header.identity, "settings": options.settings()}
        writer = StoreWriter(
            folder, classes=header.classes, image_shape=header.image_shape, identity=identity
        )
        state = read_state(folder) if status == "resume" else None
        if state is not None and not writer.matches(state):
            if not force:
                raise StoreError(
                    f"{target} holds an unfinished prepare of another source or with other "
                    f"settings; rerun that command to finish it, or pass --force to start over"
                )
            state = None
        try:
            first = writer.begin(state)
        except (TypeError, KeyError):  # a state file from an incompatible habactl
            first = writer.begin(None)
        total = sum(sum(header.counts[s]) for s in SPLITS)
        resumed = sum(r.count for s in SPLITS for r in writer.done[s])
        done = resumed
        if started is not None:
            c, h, w = header.image_shape
            what = f"{header.name}: {len(header.classes)} classes, {c}x{h}x{w}"
            started(f"{what}, resuming after {resumed:,} images" if resumed else what)

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        if progress is not None:
            progress(done, total)
        for split in SPLITS:
            writer.write(
                split,
                source.pieces(split, first[split]),
                skipped=functools.partial(source.skipped, split),
                progress=advance,
            )
        index = writer.finish(
            name=header.name,
            is_digits=header.is_digits,
            source=header.description,
            settings=options.settings(),
        )
    return PrepareResult(
        path=folder,
        index=index,
        written=done - resumed,
        resumed=resumed,
        skipped=writer.skipped(),
        seconds=time.perf_counter() - begun,
    )


def _marker() -> str:
    import json

    record = {"kind": "habactl-output", "written_by": WRITTEN_BY}
    return json.dumps(record, sort_keys=True) + "\n"


def _empty(folder: Path) -> None:
    """Remove what an earlier output left in ``folder``, the index first (from then on
    it no longer looks like a complete store) and the marker last."""
    names = sorted(os.listdir(folder), key=lambda n: (n != INDEX, n == atomic.MARKER))
    for name in names:
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as error:
            raise atomic.OutputError(
                atomic.describe(error, path), atomic.reason_of(error)
            ) from None


def _make_folder(folder: Path) -> None:
    try:
        os.mkdir(folder, 0o777)
    except FileExistsError:
        pass
    except OSError as error:
        raise atomic.OutputError(atomic.describe(error, folder), atomic.reason_of(error)) from None
