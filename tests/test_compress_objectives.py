"""Each objective owns its surface: a new objective needs its module and a registry line,
and `habactl compress` routes settings from what the objective declares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the command)
import habactl.cli.inspect_cmd  # noqa: F401
from habactl.cli.app import app
from habactl.distill import DistillConfig, objectives
from habactl.distill.objectives import OBJECTIVES, Objective
from habactl.distill.objectives.base import setting
from habactl.format import open_archive
from helpers import one_error_line

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
        return self.settings.scale * (decoded - target).square().mean(), {}


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
    users = ", ".join(name for name, cls in OBJECTIVES.items() if "--views" in cls.options())
    assert users.startswith("dm, dc, dsa")
    assert f"--views applies to --objective {users} only" in one_error_line(result)


def test_every_registered_objective_is_offered_with_its_summary():
    result = runner.invoke(app, ["compress", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.replace("│", " ").split())  # the table's rows, joined
    for name, cls in OBJECTIVES.items():
        assert f"{name} ({cls.summary.split(' (')[0]}" in text, name
        for flag in cls.options():
            assert flag in text, flag
    assert "random" in text


# The defaults as docs/objectives.md documents them, written out here rather than read from
# the Settings dataclasses, so that a changed default fails until the page says it too.
DOCUMENTED_SETTINGS = {
    "dm": {
        "real_per_class": 32,
        "views": 1,
        "embed_arch": "convnet",
        "embed_width": 1.0,
        "siamese": "class",
    },
    "dc": {
        "real_per_class": 64,
        "views": 0,
        "outer_loop": None,  # by IPC, from the reference's table
        "inner_loop": None,
        "lr_net": 0.01,
        "batch_train": 256,
        "net_arch": "convnet",
        "net_width": 1.0,
        "per_class": "loop",
    },
    "mtt": {
        "experts": None,  # required: mtt refuses to run without a buffer
        "syn_steps": 20,
        "expert_epochs": 2,
        "max_start_epoch": None,  # min(20, buffer epochs - M + 1)
        "lr_init": None,  # the experts' lr
        "lr_lr": 1e-5,
        "lr_momentum": 0.5,
        "lr_min": 1e-6,
        "batch_syn": 0,
        "variants": "one-per-step",
        "unroll": "recompute",
        "max_step": 0.01,
        "lr_max_step": 0.002,
    },
    "dd": {
        "inner_steps": 10,
        "batch_syn": 0,
        "real_per_class": 16,
        "lr_init": 0.02,
        "lr_lr": 0.1,
        "lr_momentum": 0.5,
        "record_lr": True,
        "learn_labels": False,
        "label_init": 0.9,
        "lr_labels": 1.0,
        "variants": "one-per-step",
        "unroll": "recompute",
        "net_arch": "convnet",
        "net_width": 1.0,
    },
}
DOCUMENTED_SETTINGS["kip"] = {
    "real_per_class": 32,
    "views": 0,
    "models": 1,
    "reg": 1e-6,
    "embed_arch": "convnet",
    "embed_width": 1.0,
    "solve_dtype": "float64",
}
DOCUMENTED_SETTINGS["dsa"] = DOCUMENTED_SETTINGS["dc"]
DOCUMENTED_SETTINGS["dcc"] = {**DOCUMENTED_SETTINGS["dc"], "warmup": 0.25}
DOCUMENTED_SETTINGS["cafe"] = {
    "real_per_class": 32,
    "views": 0,
    "early_weight": 0.1,
    "last_weight": 1.0,
    "embedding_weight": 2.0,
    "discrimination_weight": 2.56,
    "schedule": "dynamic",
    "probe_per_class": 10,
    "window": 5,
    "outer_tolerance": 0.04,
    "inner_tolerance": 0.03,
    "max_outer": 20,
    "max_inner": 10,
    "outer_loop": None,  # the fixed schedule's, by IPC
    "inner_loop": None,
    "lr_net": 0.01,
    "batch_train": 256,
    "net_arch": "convnet",
    "net_width": 1.0,
}
DOCUMENTED_SETTINGS["sre2l"] = {
    "teacher": None,
    "r_bn": 0.01,
    "first_bn_multiplier": 10.0,
    "batch": 100,
    "crop_scale": 0.08,
    "jitter": 4,
    "beta1": 0.5,
    "beta2": 0.9,
    "schedule": "cosine",
    "clip": True,
}
DOCUMENTED_SETTINGS["rded"] = {
    "teacher": None,
    "candidates": 300,
    "crops": 5,
    "crop_scale": 0.08,
    "batch": 100,
}
DOCUMENTED_ENGINE = {
    "dm": {},  # DistillConfig's own: lr_bases 1.0, momentum 0.5, the DSA strategy
    "dc": {"lr_bases": 0.1, "momentum": 0.5, "augment": "none"},
    "dsa": {"lr_bases": 0.1, "momentum": 0.5},
    "mtt": {"lr_bases": 100.0, "momentum": 0.5},
    "dd": {"lr_bases": 100.0, "momentum": 0.5, "augment": "none"},
    "kip": {"lr_bases": 2000.0, "momentum": 0.9, "augment": "none"},
    "dcc": {"lr_bases": 0.1, "momentum": 0.5},  # the DSA strategy: DSAC
    "cafe": {"lr_bases": 0.1, "momentum": 0.5, "augment": "none"},
    "sre2l": {"lr_bases": 0.25, "init": "noise", "contrastive": False},  # Adam
    "rded": {"iterations": 1, "init": "noise", "contrastive": False},  # the selection
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED_SETTINGS))
def test_every_objective_runs_with_its_documented_defaults(name):
    assert set(OBJECTIVES) == set(DOCUMENTED_SETTINGS)  # a new objective gets its table
    cls = OBJECTIVES[name]
    assert cls.defaults == DOCUMENTED_SETTINGS[name]
    assert cls.engine_defaults == DOCUMENTED_ENGINE[name]


def test_the_engine_defaults_are_the_documented_ones():
    engine = {f.name: f.default for f in fields(DistillConfig)}
    assert (engine["lr_bases"], engine["momentum"], engine["iterations"]) == (1.0, 0.5, 300)
    assert engine["lr_hallucinators"] == 0.001 and engine["hallucinators"] == 5
    assert engine["augment"] == "color_crop_cutout_flip_scale_rotate"


def test_settings_are_typed_dataclasses_and_defaults_follow_them():
    for cls in OBJECTIVES.values():
        # What an objective reads when the user sets nothing (its Settings made with no
        # values) is what it advertises as its defaults, which the table above pins.
        assert asdict(cls.Settings()) == cls.defaults
        assert cls.summary and all(f.type for f in fields(cls.Settings))


def test_the_toy_objective_reads_a_settings_instance(tmp_path, toy):
    from habactl.data import load_source
    from habactl.distill import Distiller

    config = DistillConfig(
        objective="toy", objective_settings={"scale": 3.0}, codec="raw", iterations=1
    )
    distiller = Distiller(load_source("digits"), config)
    assert isinstance(distiller.objective.settings, PullToMean.Settings)
    assert distiller.objective.settings.scale == 3.0
    assert distiller.objective.hyperparameters() == {"scale": 3.0}


def test_a_new_baseline_is_one_registry_entry(tmp_path, monkeypatch):
    from habactl.distill.baselines import BASELINES, Baseline, random_archive

    made = []

    def first_images(source, path, *, ipc, seed, overwrite):
        made.append((ipc, seed))
        return random_archive(source, path, ipc=ipc, seed=seed, overwrite=overwrite)

    monkeypatch.setitem(BASELINES, "first", Baseline("first", "the first images", first_images))
    out = tmp_path / "first.haba"
    args = ["compress", "digits", "--objective", "first", "--ipc", "2", "--seed", "3"]
    result = runner.invoke(app, [*args, "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert made == [(2, 3)] and out.is_file()
    result = runner.invoke(app, [*args, "--iterations", "5", "-o", str(tmp_path / "y.haba")])
    assert "--iterations does not apply to --objective first" in one_error_line(result)
    result = runner.invoke(app, [*args, "--codec", "idc", "-o", str(tmp_path / "z.haba")])
    assert "--objective first keeps real images as they are" in one_error_line(result)
    result = runner.invoke(app, ["compress", "digits", "--objective", "nope"])
    known = ", ".join([*OBJECTIVES, "random", "first"])  # the registry's order, then baselines
    assert known.startswith("dm, dc, dsa, mtt, ")
    assert f"(known: {known})" in one_error_line(result)


def test_hallucinator_defaults_are_the_stage_options_everywhere():
    from habactl.codecs.hallucinate import Hallucinate
    from habactl.distill.planner import preset_pipeline

    declared = {opt.key: opt.default for opt in Hallucinate.options}
    (entry,) = [e for e in preset_pipeline("haba") if e["name"] == "hallucinate"]
    assert entry["configuration"] == declared
    engine = {f.name: f.default for f in fields(DistillConfig)}
    assert (engine["hallucinators"], engine["hallucinator_arch"]) == (
        declared["count"],
        declared["arch"],
    )
    assert (engine["hidden"], engine["kernel"]) == (declared["hidden"], declared["kernel"])
    result = runner.invoke(app, ["compress", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.split())
    assert f"Number of hallucinators. [default: {declared['count']}]" in text
