"""Recipe files: `compress --config` takes every setting from TOML (flags override it) and
`inspect --config` prints the config that rebuilds an archive byte for byte."""

from __future__ import annotations

import pytest
import tomllib
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the command)
import habactl.cli.inspect_cmd  # noqa: F401
from habactl.cli.app import app
from habactl.format import open_archive
from helpers import one_error_line

runner = CliRunner()
EPOCH = "1700000000"
TINY = ["--iterations", "2", "--real-per-class", "4", "--contrast-batch", "8", "--threads", "1"]


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def config_of(path) -> str:
    result = invoke("inspect", path, "--config")
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


@pytest.mark.parametrize(
    "args",
    [
        ["--seed", "3", "--views", "2", "--hallucinators", "3", "--lr-bases", "0.5"],  # haba+idc
        ["--codec", "idc", "--factor", "4", "--budget-counts", "bases", "--seed", "1"],
        ["--objective", "random", "--ipc", "2", "--seed", "5"],
    ],
)
def test_the_printed_config_rebuilds_the_archive_byte_for_byte(tmp_path, args):
    first, again = tmp_path / "a.haba", tmp_path / "b.haba"
    options = args if "random" in args else [*TINY, *args]
    result = invoke("compress", "digits", "-o", first, *options, "-q")
    assert result.exit_code == 0, result.output
    config = tmp_path / "a.toml"
    config.write_text(config_of(first))
    parsed = tomllib.loads(config.read_text())
    assert parsed["data"] == "digits"
    result = invoke("compress", "--config", config, "-o", again, "-q")
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == first.read_bytes()


def test_flags_override_the_config_and_the_config_overrides_defaults(tmp_path):
    config = tmp_path / "r.toml"
    config.write_text(
        'data = "digits"\niterations = 1\nseed = 4\nthreads = 1\n'
        "contrast_batch = 8\n\n[settings]\nreal_per_class = 5\nembed_width = 0.5\n"
    )
    out = tmp_path / "r.haba"
    result = invoke("compress", "--config", config, "-o", out, "--seed", "6", "-q")
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        provenance = archive.manifest["provenance"]
    objective = provenance["hyperparameters"]["objective"]
    assert provenance["seed"] == 6 and provenance["iterations"] == 1
    assert (objective["real_per_class"], objective["embed_width"]) == (5, 0.5)
    assert provenance["hyperparameters"]["contrastive"]["batch"] == 8


def test_a_stage_flag_edits_the_configs_pipeline(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text(
        'data = "digits"\niterations = 1\nthreads = 1\n\n'
        "[settings]\nreal_per_class = 4\n\n"
        '[[pipeline]]\nname = "hallucinate"\nversion = 1\n'
        'configuration = {arch = "channel-affine", count = 4}\n'
    )
    out = tmp_path / "p.haba"
    result = invoke(
        "compress", "--config", config, "--ipc", "3", "--hallucinators", "2", "-o", out, "-q"
    )
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        stages = archive.manifest["pipeline"]
        budget = archive.manifest["provenance"]["hyperparameters"]["budget"]
    assert [s["name"] for s in stages] == ["hallucinate"]
    assert stages[0]["configuration"]["count"] == 2 and budget["codec"] == "haba"
    result = invoke("compress", "--config", config, "--factor", "2", "-o", tmp_path / "q.haba")
    assert "no upsample stage" in one_error_line(result)


@pytest.mark.parametrize(
    "text, message",
    [
        ("iterationz = 3\n", "unknown setting 'iterationz'"),
        ("iterations = 'many'\n", "iterations must be an integer"),
        ("[settings]\nsyn_steps = 3\n", "objective dm has no setting 'syn_steps'"),
        (
            "objective = 'random'\niterations = 3\n",
            "--iterations does not apply to --objective random",
        ),
        ("iterations = [\n", "not valid TOML"),
        ("unroll = 'full'\n", "--unroll applies to --objective mtt, dd only"),
    ],
)
def test_a_bad_config_is_one_error_line(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = invoke("compress", "digits", "--config", config, "-o", tmp_path / "x.haba")
    assert result.exit_code == 1
    assert message in one_error_line(result)
    assert not (tmp_path / "x.haba").exists()


def test_a_missing_config_is_named(tmp_path):
    result = invoke("compress", "--config", tmp_path / "none.toml", "-o", tmp_path / "x.haba")
    assert result.exit_code == 1 and "none.toml: no such file" in one_error_line(result)
