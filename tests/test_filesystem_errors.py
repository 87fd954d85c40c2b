"""Ordinary file-system trouble at every output: a read-only or full folder, a folder
where a file is expected, the user's own folders, permissions. Each case is one line on
stderr, exit 1, nothing half-written, and whatever was at the target is kept.

A full disk is simulated portably (the atomic writer's one write call fails with
ENOSPC after part of the data); where the tests run as root (CI containers), a real
64 KiB tmpfs and a read-only tmpfs are used as well, since chmod does not stop root.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
import habactl.runtime.atomic
from habactl.cli.app import app
from helpers import hallucinate_stage, one_error_line

# Mounts file systems in subprocesses and trains experts: seconds, not milliseconds.
pytestmark = pytest.mark.slow

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TINY_EXPERTS = ("--experts", "1", "--epochs", "1", "--width", "0.125", "-q")


def run(*args, cwd: Path | None = None):
    if cwd is None:
        return CliRunner().invoke(app, [str(a) for a in args])
    here = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(here)


def listing(folder: Path) -> list[str]:
    """Everything under ``folder`` (hidden files too), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def archive(make_archive) -> Path:
    return make_archive("a.haba", stages=[hallucinate_stage(count=2)], classes=3, per_class=2)


def _mount(options: str, folder: Path) -> bool:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def readonly_folder(tmp_path):
    """A folder nobody (not even root) can write into: chmod, or a read-only tmpfs as root."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if not IS_ROOT:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not _mount("ro,size=64k", folder):
        pytest.skip("running as root and cannot mount a read-only tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def full_folder(tmp_path):
    """A real 64 KiB file system (root only); elsewhere `disk_full` simulates one."""
    folder = tmp_path / "full"
    folder.mkdir()
    if not IS_ROOT or not _mount("size=64k", folder):
        pytest.skip("a real full disk needs root and tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def disk_full(monkeypatch):
    """Every write through habactl's atomic writer lands half its bytes, then ENOSPC."""
    calls = []

    def write(fd: int, data) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data[: max(1, len(data) // 2)])

    monkeypatch.setattr(habactl.runtime.atomic, "_write", write)
    return calls


# --- a read-only folder ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["images", "x.npz", "x.h5"])
def test_expand_into_a_read_only_folder_names_the_folder(archive, readonly_folder, name):
    line = one_error_line(run("expand", archive, "-o", readonly_folder / name))
    assert str(readonly_folder) in line
    assert "read-only" in line.lower() or "permission" in line.lower()
    assert listing(readonly_folder) == []


def test_preview_and_experts_into_a_read_only_folder(archive, readonly_folder):
    line = one_error_line(run("preview", archive, "-o", readonly_folder / "grid.png"))
    assert str(readonly_folder) in line
    line = one_error_line(run("experts", "digits", "-o", readonly_folder / "buf", *TINY_EXPERTS))
    assert str(readonly_folder) in line
    assert listing(readonly_folder) == []


# --- a full disk ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images", "x.npz", "x.h5"])
def test_expand_on_a_full_disk_keeps_the_earlier_output(tmp_path, archive, disk_full, name):
    target = tmp_path / name
    with pytest.MonkeyPatch.context() as unpatched:  # the first, successful run
        unpatched.setattr(habactl.runtime.atomic, "_write", os.write)
        assert run("expand", archive, "-o", target).exit_code == 0
    before = snapshot(target) if target.is_dir() else target.read_bytes()
    line = one_error_line(run("expand", archive, "-o", target, "--force"))
    assert "No space left on device" in line and str(tmp_path) in line
    assert (snapshot(target) if target.is_dir() else target.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.haba", name])  # no temp files


def test_preview_and_experts_on_a_full_disk_leave_nothing(tmp_path, archive, disk_full):
    line = one_error_line(run("preview", archive, "-o", tmp_path / "grid.png"))
    assert "No space left on device" in line
    line = one_error_line(run("experts", "digits", "-o", tmp_path / "buf", *TINY_EXPERTS))
    assert "No space left on device" in line
    # The buffer folder this run made holds no finished expert, so it is gone again.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.haba"]


def fill(folder: Path) -> None:
    """Write a filler file until the file system is full."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError as error:
            assert error.errno == errno.ENOSPC


@pytest.mark.parametrize("name", ["images", "x.npz"])
def test_a_real_full_tmpfs(archive, full_folder, name):
    target = full_folder / name
    assert run("expand", archive, "-o", target).exit_code == 0
    before = snapshot(target) if target.is_dir() else target.read_bytes()
    fill(full_folder)
    line = one_error_line(run("expand", archive, "-o", target, "--force"))
    assert "No space left on device" in line and str(full_folder) in line
    assert (snapshot(target) if target.is_dir() else target.read_bytes()) == before
    assert sorted(p.name for p in full_folder.iterdir()) == ["filler", name]


def test_checkpoint_on_a_full_disk_is_a_clear_error_and_keeps_the_last_one(tmp_path, disk_full):
    import torch

    from habactl.distill import checkpoint
    from habactl.errors import HabaError

    path = tmp_path / "run.ckpt"
    with pytest.MonkeyPatch.context() as unpatched:
        unpatched.setattr(habactl.runtime.atomic, "_write", os.write)
        checkpoint.save(path, {"fingerprint": "f", "bases": torch.zeros(3)})
    before = path.read_bytes()
    with pytest.raises(HabaError, match=r"run\.ckpt: No space left on device \(folder "):
        checkpoint.save(path, {"fingerprint": "f", "bases": torch.ones(30_000)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]


# --- the wrong kind of target -------------------------------------------------------------


def test_preview_into_a_folder_says_what_to_give_not_force(tmp_path, archive):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for extra in ([], ["--force"]):
        line = one_error_line(run("preview", archive, "-o", folder, *extra))
        assert "is a folder" in line and "--force" not in line
        assert str(folder / "a.png") in line  # a file path it would accept
    assert listing(folder) == []
    line = one_error_line(run("preview", archive, "-o", tmp_path / "grid.txt"))
    assert ".png" in line


def test_expand_to_a_file_name_that_is_a_folder(tmp_path, archive):
    folder = tmp_path / "x.npz"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for extra in ([], ["--force"]):
        line = one_error_line(run("expand", archive, "-o", folder, *extra))
        assert "is a folder" in line and "--force" not in line
    assert snapshot(folder) == {"keep.txt": b"mine"}


def test_expand_to_the_current_folder_is_refused_and_leaves_no_stray_folder(tmp_path, archive):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        line = one_error_line(run("expand", archive, "-o", ".", *extra, cwd=work))
        assert "current folder" in line
    assert listing(work) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.haba", "work"]


# --- folders of the user's own files --------------------------------------------------------


def test_expand_force_never_deletes_a_folder_of_the_users_files(tmp_path, archive):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8 not really")
    (folder / "notes.txt").write_text("mine")
    line = one_error_line(run("expand", archive, "-o", folder, "--force"))
    assert "did not write" in line and "holiday.jpg" in line and "notes.txt" in line
    assert snapshot(folder) == {"holiday.jpg": b"\xff\xd8 not really", "notes.txt": b"mine"}


def test_expand_replaces_its_own_folder_with_force_and_fills_an_empty_one(tmp_path, archive):
    folder = tmp_path / "images"
    folder.mkdir()  # empty: used without --force
    assert run("expand", archive, "-o", folder).exit_code == 0
    first = snapshot(folder)
    assert sum(name.endswith(".png") for name in first) == 12  # 6 bases × 2 hallucinators
    again = one_error_line(run("expand", archive, "-o", folder))
    assert "--force" in again  # here --force does help
    (folder / "000_class-0" / "000000.png").write_bytes(b"edited")
    assert run("expand", archive, "-o", folder, "--force").exit_code == 0
    assert snapshot(folder) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.haba", "images"]


def test_experts_refuses_an_unrelated_folder_before_training(tmp_path):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    for extra in ([], ["--force"]):
        line = one_error_line(run("experts", "digits", "-o", folder, *TINY_EXPERTS, *extra))
        assert "not an experts buffer" in line and "thesis.tex" in line
    assert snapshot(folder) == {"thesis.tex": b"mine"}
    (tmp_path / "file").write_text("x")
    assert "not a folder" in one_error_line(run("experts", "digits", "-o", tmp_path / "file"))


# --- permissions follow the umask -------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o027, 0o002], ids=lambda m: f"umask{m:03o}")
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_every_output_gets_the_umask_modes(tmp_path, make_archive, umask):
    import torch

    from habactl.distill import checkpoint

    archive = make_archive("m.haba", stages=[hallucinate_stage(count=2)])
    files, folders = 0o666 & ~umask, 0o777 & ~umask
    assert mode(archive) == files
    for name in ("images", "x.npz", "x.h5"):
        assert run("expand", archive, "-o", tmp_path / name).exit_code == 0
    assert run("preview", archive, "-o", tmp_path / "grid.png").exit_code == 0
    assert run("experts", "digits", "-o", tmp_path / "buf", *TINY_EXPERTS).exit_code == 0
    checkpoint.save(tmp_path / "c.ckpt", {"fingerprint": "f", "x": torch.zeros(2)})
    for path in [tmp_path / "images", tmp_path / "buf", *tmp_path.rglob("*")]:
        assert mode(path) == (folders if path.is_dir() else files), path


def test_force_through_a_symlink_replaces_the_link_not_the_folder_it_points_to(tmp_path, archive):
    real = tmp_path / "real"
    assert run("expand", archive, "-o", real).exit_code == 0
    before = snapshot(real)
    (tmp_path / "link").symlink_to(real)
    assert run("expand", archive, "-o", tmp_path / "link", "--force").exit_code == 0
    assert snapshot(real) == before and not (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.haba", "link", "real"]
