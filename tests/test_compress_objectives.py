"""Each objective owns its surface: a new objective needs its module and a registry line,
and `habactl compress` routes settings from what the objective declares."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the command)
import habactl.cli.inspect_cmd  # noqa: F401
from conftest import one_error_line
from habactl.cli.app import app
from habactl.distill import objectives
from habactl.distill.objectives import OBJECTIVES, Objective
from habactl.distill.objectives.base import setting
from habactl.format import open_archive

runner = CliRunner()


class PullToMean(Objective):
    """A toy objective with no `real_per_class`, no views, no flags: bases move towards
    their class's mean real image."""

    name = "toy"
    summary = "bases pulled to their class mean"
    engine_defaults = {"lr_bases": 0.5, "augment": "none"}

    @dataclass(frozen=True)
    class Settings:
        scale: float = setting(1.0)

    def loss(self, synthetic, generator):
        real = self.context.real
        means = [real.class_images(k).mean(0) for k in range(self.context.num_classes)]
        target = torch.stack([means[int(y)] for y in synthetic.labels])
        decoded = synthetic.decode()
        return self.settings["scale"] * (decoded - target).square().mean(), {}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "toy", PullToMean)
    monkeypatch.setitem(objectives.OBJECTIVES, "toy", PullToMean)


def test_a_new_objective_is_one_class_and_one_registry_line(tmp_path, toy):
    out = tmp_path / "toy.haba"
    recipe = tmp_path / "toy.toml"
    recipe.write_text("[settings]\nscale = 2.0\n")
    result = runner.invoke(
        app,
        [
            "compress",
            "digits",
            "--objective",
            "toy",
            "--codec",
            "raw",
            "--iterations",
            "2",
            "--config",
            str(recipe),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "toy (bases pulled to their class mean), 2 iterations" in result.stderr
    with open_archive(out) as archive:
        hyper = archive.manifest["provenance"]["hyperparameters"]
    assert hyper["objective"] == {"name": "toy", "scale": 2.0}
    assert hyper["optimizer"]["lr_bases"] == 0.5  # the objective's engine default
    result = runner.invoke(
        app,
        [
            "compress",
            "digits",
            "--objective",
            "toy",
            "--views",
            "2",
            "-o",
            str(tmp_path / "x.haba"),
        ],
    )
    assert "--views applies to --objective dm, dc, dsa only" in one_error_line(result)


def test_every_registered_objective_is_offered_with_its_summary():
    result = runner.invoke(app, ["compress", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.split())
    for name, cls in OBJECTIVES.items():
        assert f"{name} ({cls.summary.split(' (')[0]}" in text, name
        for flag in cls.options():
            assert flag in text, flag
    assert "random" in text


def test_settings_are_typed_dataclasses_and_defaults_follow_them():
    for cls in OBJECTIVES.values():
        declared = {f.name: f.default for f in fields(cls.Settings)}
        assert declared == cls.defaults
        assert cls.summary and all(f.type for f in fields(cls.Settings))
