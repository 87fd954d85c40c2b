"""`habactl compress`'s flags are generated from where each setting is declared: an
objective's `Settings`, a stage's `options`, the engine's and the run's fields. A new
objective's flag needs no edit in habactl/cli/, and --help shows the declared defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
from habactl.cli.app import app
from habactl.codecs.registry import STAGES
from habactl.distill import objectives
from habactl.distill.baselines import BASELINES
from habactl.distill.config import ContrastiveSettings, DistillConfig, RunSettings
from habactl.distill.objectives import OBJECTIVES, Objective
from habactl.distill.objectives.base import setting
from habactl.format import open_archive
from helpers import one_error_line

runner = CliRunner()


class Toy(Objective):
    """Bases pulled to their class mean, by a factor its own flag sets; it also reads
    --views, a flag dm and dc declare too."""

    name = "toy"
    summary = "a toy with a flag"
    engine_defaults = {"augment": "none"}

    @dataclass(frozen=True)
    class Settings:
        toy_flag: int = setting(1, "--toy-flag", "How hard the bases are pulled.", min=0)
        views: int = setting(1, "--views")

    def loss(self, synthetic, generator):
        real = self.context.real
        means = [real.class_images(k).mean(0) for k in range(self.context.num_classes)]
        target = torch.stack([means[int(y)] for y in synthetic.labels])
        return self.settings.toy_flag * (synthetic.decode() - target).square().mean(), {}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "toy", Toy)
    monkeypatch.setitem(objectives.OBJECTIVES, "toy", Toy)


def help_text() -> str:
    result = runner.invoke(app, ["compress", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def shown_defaults(text: str) -> dict[str, str]:
    """Flag -> the "[default: ...]" its row of the help shows (rows may wrap)."""
    lines = text.splitlines()
    rows = [line.strip("│ ") for line in lines]
    starts = [i for i, line in enumerate(lines) if re.match(r"│ --\w", line)]
    shown = {}
    for start, end in zip(starts, [*starts[1:], len(rows)], strict=True):
        flag = rows[start].split()[0]
        found = re.findall(r"\[default: ([^\]]*?)\]", " ".join(" ".join(rows[start:end]).split()))
        if found:
            shown[flag] = found[0]
    return shown


def value_of(shown: str, objective: str) -> str:
    """In "dm 32; dc, dsa 64": the value shown for ``objective`` (dc: 64)."""
    for part in shown.split("; "):
        names, _, value = part.rpartition(" ")
        if objective in names.split(", "):
            return value
    return shown.split("; ")[0]  # the common default


def test_a_new_objectives_flag_reaches_it_with_no_edit_in_the_cli(tmp_path, toy):
    text = " ".join(help_text().split())
    assert "--toy-flag" in text and "toy: how hard the bases are pulled. [default: 1]" in text
    assert text.count("--views ") == 1  # one flag for every objective that declares it
    out = tmp_path / "toy.haba"
    args = ["compress", "digits", "--objective", "toy", "--codec", "raw", "--iterations", "1"]
    result = runner.invoke(app, [*args, "--toy-flag", "3", "--views", "2", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        recorded = archive.manifest["provenance"]["hyperparameters"]["objective"]
    assert recorded == {"name": "toy", "toy_flag": 3, "views": 2}
    result = runner.invoke(app, ["compress", "digits", "--toy-flag", "3"])
    assert "--toy-flag applies to --objective toy only" in one_error_line(result)
    result = runner.invoke(app, [*args, "--toy-flag", "-1", "-o", str(tmp_path / "x.haba")])
    assert result.exit_code == 2  # the declared min: a usage error, before anything runs


def test_help_shows_the_defaults_where_they_are_declared():
    expected: dict[str, str] = {}
    varying = {key for cls in OBJECTIVES.values() for key in cls.engine_defaults}
    for cls in (DistillConfig, RunSettings, ContrastiveSettings):
        for f in fields(cls):
            flag = (f.metadata.get("flag") or ("",))[-1].split("/")[0]
            if flag.startswith("--") and f.default not in (None, False) and f.name not in varying:
                expected[flag] = str(f.default)
    for stage in STAGES.values():
        expected.update({o.flag: str(o.default) for o in stage.options if o.flag})
    per_flag: dict[str, dict[str, object]] = {}
    for name, cls in OBJECTIVES.items():
        for f in fields(cls.Settings):
            if f.metadata.get("flag"):
                per_flag.setdefault(f.metadata["flag"][-1], {})[name] = f.default
    for flag, by in per_flag.items():
        # a switch (default False) shows no default, as for the engine's fields above
        if len(set(by.values())) == 1 and not {None, False} & set(by.values()):
            expected[flag] = str(next(iter(by.values())))
    shown = shown_defaults(help_text())
    codec = expected.pop("--codec")  # and what a baseline stores, when it is not that
    assert {flag: shown.get(flag) for flag in expected} == expected
    assert shown["--codec"].startswith(codec)
    assert all(f"{name} {b.codecs[0]}" in shown["--codec"] for name, b in BASELINES.items())
    # A default that depends on the objective names each objective's value.
    for flag, by in per_flag.items():
        if len(set(by.values())) > 1:
            assert all(value_of(shown[flag], name) == str(value) for name, value in by.items())
    for key in varying:
        flag = "--" + key.replace("_", "-")
        values = {
            str(cls.engine_defaults.get(key, getattr(DistillConfig, key)))
            for cls in OBJECTIVES.values()
        }
        assert all(value in shown[flag] for value in values), (flag, shown[flag])


def test_root_help_lists_compress_without_building_it(monkeypatch):
    import habactl.cli.compress as compress_cmd

    def refuse():
        raise AssertionError("the compress command was built for the root help")

    monkeypatch.setattr(compress_cmd, "command", refuse)
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "compress" in result.stdout


def test_a_stage_options_flag_reaches_the_pipeline_with_no_edit_in_the_cli(tmp_path, monkeypatch):
    from habactl.codecs.base import StageOption
    from habactl.codecs.upsample import Upsample

    mode = StageOption("mode", "bilinear", "--upsample-mode", "How the bases are upsampled.")
    monkeypatch.setattr(Upsample, "options", (Upsample.options[0], mode))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the same bytes from the same run
    assert "How the bases are upsampled. [default: bilinear]" in " ".join(help_text().split())
    out = str(tmp_path / "n.haba")
    args = ["compress", "digits", "--iterations", "1", "--real-per-class", "4", "-q"]
    result = runner.invoke(app, [*args, "--codec", "idc", "--upsample-mode", "nearest", "-o", out])
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        (entry,) = archive.manifest["pipeline"]
    assert entry["name"] == "upsample" and entry["configuration"]["mode"] == "nearest"
    result = runner.invoke(app, [*args, "--codec", "haba", "--upsample-mode", "nearest"])
    assert "--upsample-mode does not apply: the codec haba has no upsample stage" in (
        one_error_line(result)
    )
    config = tmp_path / "c.toml"  # the same option from a config file's [stage_options]
    config.write_text('[stage_options]\nupsample = {mode = "nearest"}\n')
    again = tmp_path / "c.haba"
    result = runner.invoke(
        app, [*args, "--codec", "idc", "--config", str(config), "-o", str(again)]
    )
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == (tmp_path / "n.haba").read_bytes()
