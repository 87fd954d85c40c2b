"""A prepare killed (SIGKILL) or stopped by a full disk continues when the same command
runs again, and the result is byte for byte the store an uninterrupted prepare writes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
import habactl.runtime.atomic
from habactl.cli.app import app
from habactl.store import StoreError, open_store
from helpers import one_error_line

REPO = Path(__file__).resolve().parents[1]
CLASSES = 6

# Runs `habactl ARGS...` and SIGKILLs itself at a chosen point: right after the N-th
# state record ("class"), or halfway through the N-th write of image data ("data").
# Every finished class is recorded, so that the points are the same on any machine.
KILLER = """
import os, signal, sys
from habactl.runtime import atomic
from habactl.store import writer
where, count, calls = sys.argv[1], int(sys.argv[2]), [0]
writer.SAVE_SECONDS = 0  # every finished class is recorded
if where == "class":
    save = writer.StoreWriter._save_state
    def killing_save(self):
        save(self)
        calls[0] += 1
        if calls[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
    writer.StoreWriter._save_state = killing_save
else:
    write_all = atomic.write_all
    def killing_write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".u8"):
            calls[0] += 1
            if calls[0] == count:
                view = memoryview(data).cast("B")
                os.write(fd, view[: len(view) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        write_all(fd, data)
    atomic.write_all = killing_write
from habactl.cli.main import main
sys.argv = ["habactl", *sys.argv[3:]]
main()
"""


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def npz_source(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (CLASSES * 30, 3, 16, 16), dtype=np.uint8)
    labels = rng.permutation(np.arange(CLASSES * 30) % CLASSES)
    np.savez(folder / "set.npz", images=images, labels=labels)
    return folder / "set.npz"


def folder_source(folder: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(4)
    for cls in range(CLASSES):
        (folder / "set" / f"c{cls}").mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "set" / f"c{cls}" / f"{i}.png")
    return folder / "set"


def contents(store: Path) -> dict:
    """Data files as bytes and the index without the files' modification times."""
    index = json.loads((store / "index.json").read_text())
    for split in index["splits"].values():
        split.pop("mtime_ns")
    return {
        "index": index,
        **{name: (store / name).read_bytes() for name in ("train.u8", "test.u8")},
        "listing": sorted(os.listdir(store)),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, where, count",
    [("npz", "class", 4), ("npz", "data", 3), ("npz", "data", 8), ("folder", "class", 9)],
)
def test_a_killed_prepare_continues_to_the_same_store(tmp_path, kind, where, count):
    source = npz_source(tmp_path) if kind == "npz" else folder_source(tmp_path)
    flags = ["--workers", "0"] if kind == "folder" else []
    reference = tmp_path / "reference.store"
    assert run("prepare", source, "-o", reference, "-q", *flags).exit_code == 0
    store = tmp_path / "killed.store"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["prepare", str(source), "-o", str(store), "-q", *flags]
    done = subprocess.run(
        [sys.executable, "-c", KILLER, where, str(count), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr
    assert not (store / "index.json").exists()
    with pytest.raises(StoreError, match="incomplete: rerun the same prepare command"):
        open_store(store)
    # The same command again: it continues after the classes it had finished.
    result = run(*[a for a in args if a != "-q"])
    assert result.exit_code == 0, result.output
    assert "resuming after" in result.stderr
    assert contents(store) == contents(reference)
    assert open_store(store).fingerprint == open_store(reference).fingerprint


@pytest.fixture
def disk_full_after(monkeypatch):
    """``fill(n)``: the first n writes land, the next lands half its bytes, then ENOSPC."""

    def fill(allowed: int) -> None:
        calls = []

        def write(fd: int, data) -> int:
            calls.append(len(data))
            if len(calls) == allowed + 1:
                return os.write(fd, data[: max(1, len(data) // 2)])
            if len(calls) > allowed + 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.write(fd, data)

        monkeypatch.setattr(habactl.runtime.atomic, "_write", write)

    return fill


@pytest.mark.parametrize("allowed", [0, 2, 5, 9, 16])
def test_a_full_disk_leaves_nothing_that_looks_complete(tmp_path, disk_full_after, allowed):
    source = npz_source(tmp_path)
    reference = tmp_path / "reference.store"
    assert run("prepare", source, "-o", reference, "-q").exit_code == 0
    store = tmp_path / "full.store"
    disk_full_after(allowed)
    line = one_error_line(run("prepare", source, "-o", store, "-q"))
    assert "No space left on device" in line and str(tmp_path) in line
    assert not (store / "index.json").exists()
    with pytest.raises(StoreError):
        open_store(store)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files
    habactl.runtime.atomic._write = os.write  # space again (monkeypatch restores it afterwards)
    assert run("prepare", source, "-o", store, "-q").exit_code == 0
    assert contents(store) == contents(reference)
