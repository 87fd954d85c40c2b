"""Every CLI command through typer's CliRunner: exit codes, one-line errors, JSON."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.distill import DistillConfig
from habactl.distill.objectives import OBJECTIVES, get_objective
from habactl.evaluation.protocol import FAST, STANDARD
from helpers import hallucinate_stage, one_error_line

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits_archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "digits.haba"
    result = run("compress", "digits", "--objective", "random", "--ipc", "2", "-o", path)
    assert result.exit_code == 0, result.output
    return path


def test_version_and_usage_errors():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("habactl ")
    assert run("inspect").exit_code == 2  # missing argument is a usage error
    assert run("compress", "--ipc", "zero").exit_code == 2


@pytest.mark.parametrize(
    "command, shown",
    [
        # our own "[default: ...]" texts, not eaten as markup, with the declared values
        ("compress", f"[default: {DistillConfig().iterations}]"),
        ("evaluate", f"[default: {STANDARD.epochs}; --fast: {FAST.epochs}]"),
        ("experts", "--experts"),
    ],
)
def test_help_explains_every_option_with_its_default(command, shown):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert shown in result.stdout


def shown_default(command: str, option: str) -> str:
    """What `habactl COMMAND --help` shows as OPTION's default: the "[default: ...]" of the
    option's row (its help text may wrap onto the rows below it)."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    rows = [line.strip("│ ") for line in result.stdout.splitlines()]
    start = next(i for i, row in enumerate(rows) if row.split()[:1] == [option])
    end = next((i for i in range(start + 1, len(rows)) if rows[i].startswith("-")), len(rows))
    text = " ".join(" ".join(rows[start:end]).split())
    found = re.findall(r"\[default: ([^\]]*?)\.?\]", text)
    assert len(found) == 1, text
    return found[0]


def config_default(name: str):
    return next(f.default for f in fields(DistillConfig) if f.name == name)


def engine_default(name: str) -> str:
    """The engine's default, then each objective whose engine_defaults change it."""
    default = config_default(name)
    others = _grouped(
        (key, cls.engine_defaults[name])
        for key, cls in OBJECTIVES.items()
        if cls.engine_defaults.get(name, default) != default
    )
    return "; ".join([str(default), *others])


def objective_default(name: str) -> str:
    """Each value of an objective setting, after the objectives that have it (in the
    registry's order of first appearance)."""
    return "; ".join(
        _grouped(
            (key, cls.defaults[name]) for key, cls in OBJECTIVES.items() if name in cls.defaults
        )
    )


def _grouped(pairs) -> list[str]:
    groups: dict[object, list[str]] = {}
    for key, value in pairs:
        groups.setdefault(value, []).append(key)
    return [f"{', '.join(keys)} {value}" for value, keys in groups.items()]


@pytest.mark.parametrize(
    "command, option, expected",
    [
        ("compress", "--iterations", lambda: engine_default("iterations")),
        ("compress", "--momentum", lambda: engine_default("momentum")),
        ("compress", "--lr-hallucinators", lambda: str(config_default("lr_hallucinators"))),
        ("compress", "--hallucinators", lambda: str(config_default("hallucinators"))),
        (
            "compress",
            "--real-per-class",
            lambda: objective_default("real_per_class"),
        ),
        ("compress", "--syn-steps", lambda: str(get_objective("mtt").defaults["syn_steps"])),
        ("evaluate", "--epochs", lambda: f"{STANDARD.epochs}; --fast: {FAST.epochs}"),
        ("evaluate", "--models", lambda: f"{STANDARD.models}; --fast: {FAST.models}"),
        ("evaluate", "--batch-size", lambda: str(STANDARD.batch_size)),
    ],
)
def test_help_shows_the_defaults_the_code_uses(command, option, expected):
    # The values come from where the code reads them: the engine's DistillConfig, the
    # objective's Settings, the evaluation protocol's STANDARD and FAST.
    assert shown_default(command, option) == expected()


def test_compress_random_writes_an_honest_raw_archive(digits_archive):
    result = run("inspect", digits_archive, "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)  # stdout holds nothing but the JSON
    manifest = report["manifest"]
    assert manifest["provenance"]["dataset"]["name"] == "digits"
    assert manifest["bases"]["count"] == 20 and manifest["pipeline"] == []
    assert report["account"]["ratio"] == pytest.approx(1.0)
    assert report["expanded_items"] == 20


def test_inspect_human_summary(digits_archive):
    result = run("inspect", digits_archive)
    assert result.exit_code == 0
    for text in ("digits", "storage account", "1.00×", "raw images", "1×8×8"):
        assert text in result.stdout


def test_compress_refuses_to_overwrite_and_bad_input(tmp_path, digits_archive):
    before = digits_archive.read_bytes()
    result = run("compress", "digits", "--ipc", "2", "-o", digits_archive)
    assert result.exit_code == 1 and "--force" in one_error_line(result)
    assert digits_archive.read_bytes() == before

    result = run("compress", "no-such-set", "-o", tmp_path / "x.haba")
    assert result.exit_code == 1 and "no-such-set" in one_error_line(result)
    result = run("compress", "digits", "--ipc", "1000", "-o", tmp_path / "y.haba")
    assert result.exit_code == 1
    one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written


def test_verify_names_the_damaged_tensor(tmp_path, digits_archive):
    assert run("verify", digits_archive).exit_code == 0
    broken = tmp_path / "broken.haba"
    data = bytearray(digits_archive.read_bytes())
    data[-5] ^= 0xFF  # a data byte near the end of the last tensor
    broken.write_bytes(bytes(data))
    # Which tensor holds that byte, from the safetensors header (data offsets are relative
    # to the end of the header).
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    at = len(data) - 5 - 8 - length
    damaged = [
        name
        for name, entry in header.items()
        if name != "__metadata__" and entry["data_offsets"][0] <= at < entry["data_offsets"][1]
    ]
    assert len(damaged) == 1
    result = run("verify", broken)
    assert result.exit_code == 1
    assert "sha256" in result.stderr or "digest" in result.stderr
    assert f"'{damaged[0]}'" in result.stderr  # the damaged tensor is named
    others = [name for name in header if name not in ("__metadata__", damaged[0])]
    assert not any(f"'{name}'" in result.stderr for name in others)

    missing = run("verify", tmp_path / "nope.haba")
    assert missing.exit_code == 1
    one_error_line(missing)


def test_expand_to_png_folders_hdf5_and_npz(tmp_path, digits_archive):
    folder = tmp_path / "images"
    assert run("expand", digits_archive, "-o", folder).exit_code == 0
    class_folders = sorted(p for p in folder.iterdir() if p.is_dir())  # beside habactl's marker
    assert len(class_folders) == 10
    pngs = list(folder.rglob("*.png"))
    assert len(pngs) == 20 and Image.open(pngs[0]).size == (8, 8)

    assert run("expand", digits_archive, "-o", tmp_path / "x.h5").exit_code == 0
    with h5py.File(tmp_path / "x.h5") as handle:
        assert handle["images"].shape == (20, 1, 8, 8) and handle["labels"].shape == (20,)

    assert run("expand", digits_archive, "-o", tmp_path / "x.npz", "--pixels").exit_code == 0
    with np.load(tmp_path / "x.npz") as data:
        assert data["images"].min() >= 0 and data["images"].max() <= 1

    again = run("expand", digits_archive, "-o", folder)
    assert again.exit_code == 1 and "--force" in one_error_line(again)
    assert run("expand", digits_archive, "-o", tmp_path / "x.txt").exit_code == 1


def test_preview_grid_has_a_row_per_basis_and_a_column_per_hallucinator(tmp_path, make_archive):
    path = make_archive(stages=[hallucinate_stage(count=4)], classes=3, per_class=2)
    grid = tmp_path / "grid.png"
    result = run("preview", path, "-o", grid, "--scale", "2")
    assert result.exit_code == 0, result.output
    with Image.open(grid) as picture:
        rows = json.loads(picture.text["habactl:rows"])
        columns = json.loads(picture.text["habactl:columns"])
    # Every basis, labelled by class; 1 plain + 4 hallucinated columns.
    assert rows == ["class-0", "class-0", "class-1", "class-1", "class-2", "class-2"]
    assert columns[0] == "basis" and [c.split()[-1] for c in columns[1:]] == ["1", "2", "3", "4"]


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.haba"
    garbage.write_bytes(b"not an archive at all")
    result = run("inspect", garbage)
    assert result.exit_code == 1
    assert "garbage.haba" in one_error_line(result)
    monkeypatch.setenv("HABACTL_DEBUG", "1")
    assert run("inspect", garbage).exception is not None
