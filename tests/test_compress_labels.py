"""Soft labels written by compress (`--labels FORM` with a teacher-driven objective): the
labels' bytes come out of the budget before any basis is bought, the archive holds the
teacher's labels in that form (the same `habactl relabel` writes), and a run that cannot
have them says so in one line, leaving nothing behind."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the command)
import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
from habactl.cli.app import app
from habactl.data import load_source
from habactl.distill import DistillConfig, Distiller
from habactl.distill.errors import DistillError
from habactl.distill.planner import plan_pipeline, preset_pipeline
from habactl.format import open_archive, storage_account
from habactl.labels import relabel
from helpers import digits_teacher, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "teacher.safetensors"
    digits_teacher(path)
    return path


def config(teacher, labels: str | None, codec: str = "haba+idc", **extra) -> DistillConfig:
    return DistillConfig(
        objective="sre2l",
        codec=codec,
        iterations=1,
        init="noise",
        lr_bases=0.25,
        contrastive=False,
        labels=labels,
        objective_settings={"teacher": str(teacher)},
        **extra,
    )


def test_the_planner_charges_each_basis_its_label_row():
    entries = preset_pipeline("idc", factor=2)
    hard = plan_pipeline(entries, (1, 8, 8), 10, 4)
    soft = plan_pipeline(entries, (1, 8, 8), 10, 4, label_form="float16")
    assert soft.label_row_bytes == 2 * 10 and soft.label_bytes == 20
    assert soft.bases < hard.bases
    assert soft.charged_bytes <= soft.budget_bytes < soft.charged_bytes + soft.basis_bytes + 20
    record = soft.describe()
    assert record["labels"] == "float16" and record["label_bytes"] == soft.bases * 20
    assert "labels" not in hard.describe() and "label_bytes" not in hard.describe()


@pytest.mark.slow
@pytest.mark.parametrize("form", ["top-k:3", "uint8"])
def test_compress_writes_the_teachers_labels_within_the_budget(teacher, tmp_path, form):
    source = load_source("digits")
    hard = Distiller(source, config(teacher, None)).run(tmp_path / "hard.haba")
    soft = Distiller(source, config(teacher, form)).run(tmp_path / "soft.haba")
    with open_archive(soft.path) as archive:
        manifest = archive.manifest
        labels = {n: t.clone() for n, t in archive.tensors().items() if n.startswith("labels")}
    account = storage_account(manifest)
    assert manifest["labels"]["kind"] == "soft"
    assert manifest["provenance"]["teacher"]["name"] == teacher.name
    assert account.parts["labels"].counted and account.parts["labels"].bytes > 0
    assert account.counted_bytes <= account.budget_bytes
    # the labels were paid for with bases
    with open_archive(hard.path) as archive:
        assert manifest["bases"]["count"] < archive.manifest["bases"]["count"]
    # the labels are the ones relabel computes for the same images
    again = relabel(soft.path, teacher, tmp_path / "again.haba", form=form)
    with open_archive(again.path) as archive:
        for name, tensor in labels.items():
            assert archive.tensors()[name].equal(tensor), name
    # nothing but the archives in the folder (the hard-labelled draft is gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.haba", "hard.haba", "soft.haba"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"labels": "int4"}, "--labels: labels form 'int4' is not one of"),
        ({"labels": "top-k:11"}, "--labels top-k:11: the data has only 10 classes"),
    ],
)
def test_a_bad_form_is_one_line(teacher, settings, message):
    with pytest.raises(DistillError) as error:
        Distiller(load_source("digits"), config(teacher, **settings))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_labels_need_a_teacher_objective(tmp_path):
    with pytest.raises(DistillError) as error:
        Distiller(load_source("digits"), DistillConfig(objective="dm", labels="float16"))
    assert "--labels needs a teacher" in str(error.value)
    assert "habactl relabel" in str(error.value)


def test_no_room_for_the_labels_is_one_line_and_writes_nothing(teacher, tmp_path):
    # raw images at IPC 1: one image per class is the whole budget, no byte is left
    out = tmp_path / "raw.haba"
    args = ["compress", "digits", "-o", str(out), "--objective", "sre2l", "--teacher"]
    result = CliRunner().invoke(
        app, [*args, str(teacher), "--codec", "raw", "--labels", "float16", "--iterations", "1"]
    )
    line = one_error_line(result)
    assert "budget too small" in line and "+ 20 label bytes" in line and "--codec idc" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_inspect_config_rebuilds_the_archive_with_its_labels(teacher, tmp_path, monkeypatch):
    import shutil

    # the config names the teacher by its file name: rebuild beside it
    shutil.copy(teacher, tmp_path / "t.safetensors")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    runner = CliRunner()
    made = runner.invoke(
        app,
        ["compress", "digits", "--objective", "sre2l", "--teacher", "t.safetensors", "-q",
         "--iterations", "1", "--labels", "top-k:2", "--threads", "1", "-o", "a.haba"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    shown = runner.invoke(app, ["inspect", "a.haba", "--config"])
    assert 'labels = "top-k:2"' in shown.stdout and 'teacher = "t.safetensors"' in shown.stdout
    (tmp_path / "c.toml").write_text(shown.stdout)
    again = runner.invoke(app, ["compress", "--config", "c.toml", "-q", "-o", "b.haba"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "b.haba").read_bytes() == (tmp_path / "a.haba").read_bytes()
