"""`habactl evaluate` with the knowledge-distillation recipe: chosen by the archive or by
--recipe, the stored labels or a teacher's outputs as targets, the missing teacher.

Tiny settings (8×8 digits, a few epochs, one model): behaviour a user notices, never
accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.evaluation import KD
from habactl.evaluation.protocol import teacher_entry
from habactl.evaluation.train import train_net
from helpers import one_error_line, rewrite

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
RECORDED = {"name": "digits-teacher.safetensors", "sha256": "ab" * 32, "bytes": 1_199_896}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits():
    from habactl.data import load_source

    return load_source("digits")


@pytest.fixture(scope="module")
def write(tmp_path_factory, digits):
    """Factory: a digits archive of 2 real images per class, hard or soft labels, with the
    standard recipe or `recommended` as its training.recommended entry."""
    from habactl.codecs import Pipeline
    from habactl.distill.archive import write_haba
    from habactl.distill.baselines import random_per_class
    from habactl.format.normalization import Normalizer, mean_std

    folder = tmp_path_factory.mktemp("evaluate-kd")

    def build(name: str, *, soft: bool = False, recommended: dict | None = None) -> Path:
        normalization = mean_std(digits.mean(), digits.std())
        picked = random_per_class(digits.train.labels, 2, digits.num_classes, 0)
        bases = Normalizer(normalization)(digits.train.images[picked])
        labels = digits.train.labels[picked]
        if soft:
            labels = torch.nn.functional.one_hot(labels, 10).float() * 0.9 + 0.01
        path = write_haba(
            folder / name,
            source=digits,
            bases=bases,
            labels=labels,
            pipeline=Pipeline.from_manifest([], tuple(bases.shape[1:])),
            normalization=normalization,
            objective="random",
            hyperparameters={"per_class": 2},
            iterations=0,
            seed=0,
            ipc=2,
            overwrite=True,
        )
        if recommended is not None:
            rewrite(path, lambda m: m["training"].update(recommended=recommended))
        return path

    return build


def report_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


TINY = ("--epochs", "2", "--models", "1", "-j", "1", "--json", "-q")


def test_a_kd_archive_trains_with_its_recipe_and_standard_on_request(write):
    path = write("soft-kd.haba", soft=True, recommended=KD.recommended("convnet"))
    protocol = report_of(run("evaluate", path, *TINY))["protocol"]
    assert (protocol["loss"], protocol["optimizer"], protocol["schedule"]) == (
        "kd",
        "adamw",
        "cosine",
    )
    assert protocol["augmentation"] == "rrc_flip" and protocol["temperature"] == KD.temperature
    assert (protocol["lr"], protocol["lr_source"], protocol["batch_size"]) == (
        KD.lr,
        "archive",
        KD.batch_size,
    )
    assert "teacher" not in protocol
    standard = report_of(run("evaluate", path, *TINY, "--recipe", "standard"))["protocol"]
    assert (standard["loss"], standard["optimizer"], standard["augmentation"]) == (
        "ce",
        "sgd",
        "dsa",
    )
    assert (standard["lr"], standard["lr_source"], standard["batch_size"]) == (
        0.01,
        "protocol",
        256,
    )


def test_recipe_kd_scores_a_standard_archive_the_other_way(write):
    path = write("soft.haba", soft=True)
    standard = report_of(run("evaluate", path, *TINY))["protocol"]
    assert standard["loss"] == "ce" and standard["lr_source"] == "archive"
    kd = report_of(run("evaluate", path, *TINY, "--recipe", "kd", "--temperature", "2"))
    assert kd["protocol"]["loss"] == "kd" and kd["protocol"]["temperature"] == 2
    assert kd["protocol"]["lr"] == KD.lr and kd["protocol"]["lr_source"] == "protocol"
    assert 0 <= kd["results"]["convnet"]["mean"] <= 100
    human = run(
        "evaluate", path, "--epochs", "1", "--models", "1", "-j", "1", "-q", "--recipe", "kd"
    )
    assert human.exit_code == 0, human.output
    assert "kd loss at temperature" in human.stdout and "AdamW" in human.stdout


def test_kd_on_hard_labels_warns_that_the_targets_are_one_hot(write):
    path = write("hard.haba")
    result = run("evaluate", path, "--epochs", "1", "--models", "1", "-j", "1", "--recipe", "kd")
    assert result.exit_code == 0, result.output
    assert "one-hot targets" in result.stderr


def test_the_missing_teacher_is_named_in_one_line(write):
    recommended = KD.recommended("convnet", teacher=RECORDED)
    path = write("online.haba", recommended=recommended)
    line = one_error_line(run("evaluate", path, "--epochs", "1", "--models", "1"))
    assert "--teacher" in line and "digits-teacher.safetensors" in line
    assert RECORDED["sha256"] in line and "1,199,896 bytes" in line
    # The standard recipe needs no teacher.
    assert run("evaluate", path, *TINY, "--recipe", "standard").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--recipe", "fancy"), "unknown recipe 'fancy'"),
        (("--recipe", "standard", "--temperature", "4"), "apply to the kd recipe"),
        (("--recipe", "standard", "--teacher", "t.safetensors"), "apply to the kd recipe"),
        (("--recipe", "kd", "--teacher", "no-such.safetensors"), "no such teacher file"),
        (("--temperature", "4"), "--temperature applies to the kd recipe"),
        (("--recipe", "kd", "--temperature", "0"), "temperature must be positive"),
    ],
)
def test_recipe_options_are_checked(write, args, message):
    path = write("checked.haba")
    line = one_error_line(run("evaluate", path, "--epochs", "1", "--models", "1", *args))
    assert message in line


class ConstantTeacher:
    """Says class 0 of every image: the targets of online distillation, not the labels."""

    def probabilities(self, images: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        out = torch.full((images.shape[0], 3), 1e-6)
        out[:, 0] = 1.0
        return out / out.sum(1, keepdim=True)


def test_with_a_teacher_the_targets_are_its_outputs_on_each_batch():
    torch.manual_seed(0)
    images = torch.randn(12, 1, 8, 8)
    labels = torch.tensor([0, 1, 2] * 4)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    protocol = KD.with_(epochs=30, batch_size=4, temperature=1.0, lr=0.05)
    train_net(net, images, labels, protocol, teacher=ConstantTeacher())
    with torch.no_grad():
        assert bool((net(images).argmax(1) == 0).all())  # the labels say 1 and 2 as well
    with pytest.raises(Exception, match="kd loss only"):
        train_net(net, images, labels, protocol.with_(loss="ce"), teacher=ConstantTeacher())


# -- with a real teacher (trained once for the module) ---------------------------------------


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, digits):
    from habactl.teacher import TeacherSettings, train_teacher

    path = tmp_path_factory.mktemp("teacher") / "digits-teacher.safetensors"
    train_teacher(digits, path, TeacherSettings(epochs=1, device="cpu"))
    return path


@pytest.mark.slow
def test_online_distillation_with_the_recorded_teacher(write, teacher_file):
    from habactl.teacher import load_teacher

    entry = teacher_entry(load_teacher(teacher_file))
    path = write("online-real.haba", recommended=KD.recommended("convnet", teacher=entry))
    report = report_of(run("evaluate", path, *TINY, "--teacher", teacher_file))
    teacher = report["protocol"]["teacher"]
    assert teacher["sha256"] == entry["sha256"] and teacher["bytes"] == entry["bytes"]
    assert report["protocol"]["loss"] == "kd" and not report["warnings"]
    # Another teacher than the recorded one trains, with a warning naming the recorded one.
    other = write("other-teacher.haba", recommended=KD.recommended("convnet", teacher=RECORDED))
    result = run("evaluate", other, *TINY[:-2], "--teacher", teacher_file)
    assert result.exit_code == 0, result.output
    assert "is not the one the archive records" in result.stderr


@pytest.mark.slow
def test_a_teacher_in_another_normalisation_is_refused(write, teacher_file, digits):
    from habactl.format.normalization import mean_std

    path = write("renormalised.haba", recommended=KD.recommended("convnet"))
    rewrite(path, lambda m: m.update(normalization=mean_std([0.5], [0.25])))
    line = one_error_line(
        run("evaluate", path, "--epochs", "1", "--models", "1", "--teacher", teacher_file)
    )
    assert "the teacher takes images normalised as" in line


def test_a_teacher_needs_the_kd_recipe(write):
    path = write("standard-with-teacher.haba")
    line = one_error_line(run("evaluate", path, "--epochs", "1", "--teacher", path))
    assert "--recipe kd" in line
