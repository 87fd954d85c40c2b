"""`habactl compress` refuses bad output locations and options that do not apply, with one
line on stderr, before it loads any data (so before any distillation starts)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import habactl.cli.compress as compress_cmd
import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
from habactl.cli.app import app
from habactl.distill.objectives import OBJECTIVES
from habactl.format import open_archive
from helpers import one_error_line

runner = CliRunner()
TINY = ["--iterations", "2", "--real-per-class", "4", "--contrast-batch", "8"]


def run(*args) -> object:
    return runner.invoke(app, ["compress", *[str(a) for a in args]])


@pytest.fixture
def no_data(monkeypatch):
    """Loading the data set is where a run starts: a check that comes late fails the test."""

    def refuse(run):
        raise AssertionError(f"data loaded for {run.data!r} before the checks")

    monkeypatch.setattr(compress_cmd, "_load", refuse)


def _owners(flag: str) -> str:
    """The registered objectives that offer `flag`, in the order the error names them."""

    names = ", ".join(name for name, cls in OBJECTIVES.items() if flag in cls.options())
    assert names.startswith(("dc, dsa", "mtt"))  # the objectives that first offered it
    return names


def _known() -> str:
    from habactl.distill.baselines import BASELINES

    return ", ".join([*OBJECTIVES, *BASELINES])


_KNOWN = _known()
assert _KNOWN.startswith("dm, dc, dsa, mtt") and _KNOWN.endswith("random")


def refused_early(*args) -> str:
    """The one error line of a compress that stops before its data (`no_data` fails a
    run that loads it)."""
    result = run(*args)
    assert result.exit_code == 1, result.output
    return one_error_line(result)


def unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    # root writes through permission bits; /sys refuses new files even to root
    if not Path("/sys").is_dir():
        pytest.skip("no read-only folder to write into")
    return Path("/sys")


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-checkpoint-folder", "folder"),
        ("log-file-is-a-folder", "is a folder"),
        ("output-is-a-folder", "is a folder"),
        ("unwritable-output-folder", "not writable"),
        ("unwritable-checkpoint-folder", "not writable"),
        ("png-output", "ends in .haba"),
    ],
)
def test_every_output_location_is_checked_before_the_run(tmp_path, no_data, case, message):
    out = tmp_path / "a.haba"
    args = {
        "missing-checkpoint-folder": ["-o", out, "--checkpoint", tmp_path / "missing" / "c.ckpt"],
        "log-file-is-a-folder": ["-o", out, "--log-file", tmp_path],
        "output-is-a-folder": ["-o", tmp_path],
        "unwritable-output-folder": ["-o", unwritable_folder(tmp_path) / "a.haba"],
        "unwritable-checkpoint-folder": [
            "-o",
            out,
            "--checkpoint",
            unwritable_folder(tmp_path) / "c.ckpt",
        ],
        "png-output": ["-o", tmp_path / "result.png"],
    }[case]
    line = refused_early("digits", *TINY, *args)
    assert message in line, line
    if case == "missing-checkpoint-folder":
        assert "checkpoint" in line and "missing" in line
    assert not out.exists() and not (tmp_path / "result.png").exists()
    assert not any(p.name.startswith(".habactl-probe-") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--unroll", "full"], f"--unroll applies to --objective {_owners('--unroll')} only"),
        (["--syn-steps", "3"], "--syn-steps applies to --objective mtt only"),
        (["--experts", "buf"], "--experts applies to --objective mtt only"),
        (
            ["--objective", "mtt", "--outer-loop", "2"],
            f"--outer-loop applies to --objective {_owners('--outer-loop')} only",
        ),
        (["--objective", "dc", "--views", "1", "--syn-steps", "3"], "--syn-steps applies"),
        (
            ["--objective", "random", "--iterations", "3"],
            "--iterations does not apply to --objective random",
        ),
        (["--objective", "random", "--hallucinators", "3"], "--hallucinators does not apply"),
        (["--objective", "random", "--lr-bases", "0.5"], "--lr-bases does not apply"),
        (["--objective", "random", "--codec", "idc"], "only --codec raw"),
        (["--objective", "nope"], f"unknown objective 'nope' (known: {_KNOWN})"),
    ],
)
def test_an_option_that_does_not_apply_is_an_error(tmp_path, no_data, args, message):
    line = refused_early("digits", "-o", tmp_path / "a.haba", *args)
    assert message in line, line
    assert list(tmp_path.iterdir()) == []


def _image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_default_output_is_named_after_the_data_in_the_current_folder(tmp_path, monkeypatch):
    data = _image_folder(tmp_path / "pets")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for spec in ("../pets/", str(data)):  # a trailing slash, an absolute path
        result = run(spec, "--objective", "random", "--force", "-q")
        assert result.exit_code == 0, result.output
        assert (work / "pets.haba").is_file()
        assert not (data / ".haba").exists() and not (tmp_path / "pets.haba").exists()
        (work / "pets.haba").unlink()


def test_images_key_and_labels_key_reach_npz_files(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.random((30, 1, 8, 8)), y=np.repeat(np.arange(3), 10))
    out = tmp_path / "d.haba"
    result = run(path, "--objective", "random", "-o", out, "-q")
    assert result.exit_code == 1 and "images" in one_error_line(result)  # default keys absent
    result = run(
        path, "--objective", "random", "-o", out, "--images-key", "x", "--labels-key", "y", "-q"
    )
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        assert archive.manifest["bases"]["per_class"] == [1, 1, 1]
