"""`habactl teacher`: the file it writes and what it says, its checks before any work, a
store read batch by batch, torchrun's ranks, and teacher files given to inspect/verify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.data.stored import StoreFile
from habactl.store import write_store
from habactl.teacher import load_teacher
from helpers import error_lines, habactl_peak_kib, needs_torchrun, one_error_line, run_habactl

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["ant", "bee", "cat", "dog"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(the teacher file, the command's result): two epochs on digits."""
    path = tmp_path_factory.mktemp("teacher-cli") / "t.safetensors"
    result = run("teacher", "digits", "-o", path, "--epochs", "2", "--threads", "1")
    assert result.exit_code == 0, result.output
    return path, result


def pixels(classes: int, per_class: int, size: int, seed: int):
    """Class-sorted uint8 RGB images with a class signal (each class its own colour)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    centres = rng.integers(40, 216, size=(classes, 3, 1, 1))
    noise = rng.integers(-40, 41, size=(len(labels), 3, size, size))
    return (centres[labels] + noise).clip(0, 255).astype(np.uint8), labels


def make_store(path: Path, classes=4, per_class=200, size=8, test_per_class=20) -> Path:
    names = CLASSES if classes == len(CLASSES) else [f"c{k}" for k in range(classes)]
    return write_store(
        path,
        name="toy",
        classes=names,
        train=pixels(classes, per_class, size, 0),
        test=pixels(classes, test_per_class, size, 1),
    )


# -- what the command writes and says ---------------------------------------------------


def test_the_command_writes_a_teacher_and_reports_its_accuracy_and_bytes(made):
    path, result = made
    teacher = load_teacher(path)
    training = teacher.info.training
    assert teacher.arch == "convnet" and training["epochs"] == 2
    assert teacher.dataset["name"] == "digits"
    assert training["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wrote {path}: convnet")
    assert f"train accuracy {training['train_accuracy']:.4f}" in last
    assert f"test accuracy {training['test_accuracy']:.4f}" in last
    assert f"{path.stat().st_size:,} bytes" in last
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.safetensors"]  # no temp file


def test_progress_names_the_run_and_shows_each_epochs_loss_and_accuracy(made):
    _, result = made
    text = result.stderr
    assert "digits: teacher convnet" in text and "batch norm" in text
    assert "2 epochs" in text and "augmentation color_crop_cutout_scale_rotate" in text  # no flip
    assert "epoch 1/2 loss" in text and " acc " in text


def test_help_lists_the_settings_with_their_defaults():
    result = CliRunner().invoke(app, ["teacher", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--arch", "--epochs", "--lr", "--batch-size", "--width", "--force"):
        assert option in result.stdout
    assert "[default: 20]" in result.stdout and "[default: 0.05]" in result.stdout
    assert "habactl teacher digits" in result.stdout


# -- checks before any work ---------------------------------------------------------------


def test_an_existing_output_is_refused_before_the_data_is_read(made, tmp_path):
    existing = tmp_path / "t.safetensors"
    shutil.copy(made[0], existing)
    before = existing.read_bytes()
    # The data does not exist either: the output's error comes first, so it was checked first.
    line = one_error_line(run("teacher", "no-such-data", "-o", existing))
    assert "exists; pass --force" in line
    assert existing.read_bytes() == before
    other = one_error_line(run("teacher", "no-such-data", "-o", tmp_path / "new.safetensors"))
    assert "no-such-data" in other
    assert not (tmp_path / "new.safetensors").exists()


@pytest.fixture
def readonly_folder(tmp_path):
    """A folder nobody (not even root) can write into: chmod, or a read-only tmpfs as root."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("running as root and cannot mount a read-only tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_folder_that_cannot_be_written_is_one_line_before_the_data_is_read(
    readonly_folder, tmp_path
):
    line = one_error_line(run("teacher", "no-such-data", "-o", readonly_folder / "t.safetensors"))
    assert f"cannot write into folder {readonly_folder}" in line
    line = one_error_line(run("teacher", "digits", "-o", tmp_path / "none" / "t.safetensors"))
    assert "does not exist" in line
    line = one_error_line(run("teacher", "digits", "-o", tmp_path))
    assert "is a folder" in line


@pytest.mark.parametrize(
    ("arch", "said"), [("mlp", "needs batch norm"), ("lenet", "unknown architecture 'lenet'")]
)
def test_a_network_without_batch_norm_or_unknown_is_refused_in_one_line(tmp_path, arch, said):
    line = one_error_line(
        run("teacher", "digits", "-o", tmp_path / "t.safetensors", "--arch", arch)
    )
    assert said in line
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_the_file_and_quiet_prints_nothing(made, tmp_path):
    target = tmp_path / "t.safetensors"
    shutil.copy(made[0], target)
    args = ("teacher", "digits", "-o", target, "--epochs", "1", "--threads", "1", "-q")
    result = run(*args, "--force")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout == ""
    assert load_teacher(target).info.training["epochs"] == 1


# -- a store: read batch by batch -----------------------------------------------------------


def test_a_store_is_read_a_batch_at_a_time_never_whole(tmp_path, monkeypatch):
    store = make_store(tmp_path / "toy.store")  # 800 training images, 80 test images
    reads: dict[str, list[int]] = {"train.u8": [], "test.u8": []}
    rows, span = StoreFile.rows, StoreFile.range

    def counted_rows(self, indices):
        out = rows(self, indices)
        reads[self.path.name].append(len(out))
        return out

    def counted_range(self, start, stop):
        reads[self.path.name].append(stop - start)
        return span(self, start, stop)

    monkeypatch.setattr(StoreFile, "rows", counted_rows)
    monkeypatch.setattr(StoreFile, "range", counted_range)
    out = tmp_path / "t.safetensors"
    result = run("teacher", store, "-o", out, "--epochs", "1", "--batch-size", "32",
                 "--width", "0.25", "--threads", "1", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert max(reads["train.u8"]) <= 32  # a batch per read
    assert sum(reads["train.u8"]) == 800  # each image read once in the epoch
    assert sum(reads["test.u8"]) == 80
    teacher = load_teacher(out)
    from habactl.store import open_store

    assert teacher.classes == tuple(CLASSES) and teacher.image_shape == (3, 8, 8)
    assert teacher.dataset["fingerprint"] == open_store(store).fingerprint


def _peak_kib(data: Path, out: Path) -> int:
    """The peak resident memory (KiB) of one `habactl teacher` in a child process."""
    args = [str(data), "-o", str(out), "--epochs", "1", "--width", "0.125",
            "--batch-size", "256", "--threads", "1", "-q"]  # fmt: skip
    return habactl_peak_kib(["teacher", *args], out, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_peak_memory_stays_flat_as_the_store_grows_tenfold(tmp_path):
    # 10 classes of 3x32x32: 100 images per class (3 MiB) and 1,000 (29 MiB; 117 MiB as
    # float32, which a run holding the set in memory would add at least once).
    small = make_store(tmp_path / "small.store", classes=10, per_class=100, size=32)
    large = make_store(tmp_path / "large.store", classes=10, per_class=1000, size=32)
    peaks = [_peak_kib(small, tmp_path / "s.safetensors"), _peak_kib(large, tmp_path / "l.st")]
    assert peaks[1] < 1.10 * peaks[0], peaks


# -- torchrun -------------------------------------------------------------------------------


@pytest.mark.slow
@needs_torchrun
def test_two_ranks_write_one_teacher_as_good_as_one_process(tmp_path):
    args = ("teacher", "digits", "--epochs", "2", "--threads", "1")
    one = run_habactl(*args, "-o", "one.safetensors", cwd=tmp_path, world=None, timeout=300)
    two = run_habactl(*args, "-o", "two.safetensors", cwd=tmp_path, world=2, timeout=300)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stderr.count("wrote two.safetensors") == 1  # rank 0 alone reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "two.safetensors"]
    single, split = (
        load_teacher(tmp_path / "one.safetensors"),
        load_teacher(tmp_path / "two.safetensors"),
    )
    assert single.info.training["ranks"] == 1 and split.info.training["ranks"] == 2
    # Each rank normalises its half of a batch and draws its own augmentations, so the
    # weights differ from one process's; both learn the data (ten classes: chance 0.1).
    assert single.info.training["test_accuracy"] > 0.5
    assert split.info.training["test_accuracy"] > 0.5
    # The file holds the network that scored it (a few of 359 test images may flip
    # between one machine's kernels and another's).
    from habactl.data.normalized import normalized_test
    from habactl.data.opening import open_data
    from habactl.evaluation.score import accuracy

    digits = open_data("digits")
    scored = accuracy(split.net, normalized_test(digits, split.normalization), digits.test.labels)
    assert scored == pytest.approx(split.info.training["test_accuracy"], abs=0.01)


@pytest.mark.slow
@needs_torchrun
def test_two_ranks_refuse_an_existing_output_in_one_line(made, tmp_path):
    shutil.copy(made[0], tmp_path / "t.safetensors")
    done = run_habactl("teacher", "digits", "-o", "t.safetensors", cwd=tmp_path, world=2)
    assert done.returncode != 0
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "exists; pass --force" in lines[0], done.stderr


# -- a teacher file given to inspect and verify ----------------------------------------------


def test_inspect_describes_a_teacher_file_instead_of_an_archive_error(made):
    path, _ = made
    result = run("inspect", path)
    assert result.exit_code == 0, result.output
    assert "a teacher file, not an archive" in result.stdout
    assert "convnet" in result.stdout and "10: 0, 1, 2" in result.stdout
    assert f"{path.stat().st_size:,}" in result.stdout
    as_json = json.loads(run("inspect", path, "--json").stdout)
    assert as_json["teacher"]["kind"] == "habactl-teacher"
    assert as_json["bytes"] == path.stat().st_size
    assert "not an archive" in one_error_line(run("inspect", path, "--config"))


def test_verify_loads_a_teacher_file_and_names_damage_in_one_line(made, tmp_path):
    path, _ = made
    result = run("verify", path)
    assert result.exit_code == 0, result.output
    assert "a teacher file, not an archive (convnet, 10 classes" in result.stderr
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:-100])  # header intact, tensors cut short
    assert "damaged teacher file" in one_error_line(run("verify", damaged))


@pytest.mark.slow
def test_inspect_of_a_teacher_file_imports_no_torch(made):
    code = (
        "import sys; from habactl.cli.main import main\n"
        f"sys.argv = ['habactl', 'inspect', {str(made[0])!r}]\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    assert not stop.code\n"
        "print('LOADED', sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
