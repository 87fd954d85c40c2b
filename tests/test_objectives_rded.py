"""Selection by a teacher's confidence (`rded`) through the engine, at tiny settings (digits)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from habactl.data import load_source
from habactl.distill import DistillConfig, Distiller
from habactl.distill import checkpoint as ckpt
from habactl.distill.errors import DistillError
from habactl.errors import HabaError
from habactl.format import open_archive
from habactl.training.dataset import HabaDataset
from helpers import digits_teacher, one_error_line, tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"candidates": 30, "crops": 4, "batch": 16}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("rded") / "teacher.safetensors"
    digits_teacher(path)
    return path


def config(
    teacher, codec: str = "raw", ipc: int = 1, iterations: int = 1, **settings
) -> DistillConfig:
    return DistillConfig(
        objective="rded",
        codec=codec,
        ipc=ipc,
        iterations=iterations,
        init="noise",
        contrastive=False,
        checkpoint_every=1000,
        objective_settings={"teacher": str(teacher), **SETTINGS, **settings},
    )


def teacher_ce(distiller) -> torch.Tensor:
    """The teacher's cross-entropy on every decoded synthetic image, by its class."""
    with torch.no_grad():
        images = distiller.synthetic.decode()
        labels = distiller.synthetic.labels.repeat_interleave(distiller.synthetic.expansion)
        return F.cross_entropy(distiller.objective.teacher.logits(images), labels, reduction="none")


@pytest.mark.parametrize("codec", ["raw", "idc"])
def test_the_crops_kept_are_ones_the_teacher_is_more_confident_on(teacher, codec):
    distiller = Distiller(load_source("digits"), config(teacher, codec))
    record = distiller.step()
    assert record["selected_ce"] < 0.8 * record["scored_ce"], record
    # The stored bases, decoded as the student sees them, are what was scored: the
    # teacher's cross-entropy on them is the selection's own figure.
    assert float(teacher_ce(distiller).mean()) == pytest.approx(record["selected_ce"], rel=1e-4)


def test_idc_bases_are_crops_at_the_bases_size_and_decode_to_full_images(teacher):
    distiller = Distiller(load_source("digits"), config(teacher, "idc"))
    distiller.step()
    # digits are 8x8: factor 2 keeps 4x4 crops, four per class at IPC 1 (RDED's 2x2 tiles)
    assert tuple(distiller.synthetic.bases.shape) == (40, 1, 4, 4)
    assert distiller.synthetic.decode().shape == (40, 1, 8, 8)
    # no two bases of a class are the same crop
    for k in range(10):
        part = distiller.synthetic.bases[4 * k : 4 * k + 4].detach().flatten(1)
        assert torch.cdist(part, part).add(torch.eye(4) * 1e9).min() > 0


def test_later_iterations_change_nothing(teacher):
    distiller = Distiller(load_source("digits"), config(teacher, iterations=3))
    distiller.step()
    after_selection = distiller.synthetic.bases.detach().clone()
    for _ in range(2):
        assert distiller.step()["loss"] == 0.0
    assert torch.equal(distiller.synthetic.bases.detach(), after_selection)


@pytest.mark.parametrize(
    "engine",
    [
        {"codec": "raw"},
        {"codec": "idc"},
        {"codec": "haba", "ipc": 2},
        {"codec": "haba+idc"},
        {"codec": "raw", "quantize": "uint8"},
        {"codec": "idc", "frequency": 8},
        {"codec": "haba+idc", "frequency": 8, "frequency_mask": "per-class"},
    ],
)
def test_every_codec_runs_and_writes_finite_tensors(teacher, tmp_path, engine):
    run = DistillConfig(**{**config(teacher).__dict__, **engine})
    distiller = Distiller(load_source("digits"), run)
    record = distiller.step()
    # the images the student sees are still more confidently their class than crops at random
    assert float(teacher_ce(distiller).mean()) < record["scored_ce"]
    result = Distiller(load_source("digits"), run).run(tmp_path / "x.haba")
    dataset = HabaDataset(result.path)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert bool(torch.isfinite(images).all())


def test_the_archive_records_the_teacher_the_recipe_needs(teacher, tmp_path):
    from habactl.teacher import load_teacher

    result = Distiller(load_source("digits"), config(teacher)).run(tmp_path / "x.haba")
    with open_archive(result.path) as archive:
        recorded = archive.manifest["provenance"]["hyperparameters"]["objective"]
    loaded = load_teacher(teacher)
    assert recorded["teacher"]["sha256"] == loaded.sha256
    assert recorded["training_teacher"]["kd"] == "online"
    assert recorded["training_teacher"]["bytes"] == loaded.file_bytes == teacher.stat().st_size
    # the recipe: distillation from that teacher online, which training needs beside the file
    recipe = HabaDataset(result.path).recipe
    assert recipe.kind == "kd" and recipe.teacher is not None
    assert (recipe.teacher.sha256, recipe.teacher.bytes) == (loaded.sha256, loaded.file_bytes)


def test_resume_equals_an_uninterrupted_run(teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = load_source("digits")
    base = config(teacher, "idc", iterations=3)
    whole = Distiller(source, base).run(tmp_path / "whole.haba")
    first = Distiller(source, base)
    first.step()
    ckpt.save(tmp_path / "resumed.haba.ckpt", first._state())
    resumed = Distiller(source, base)
    resumed.objective.select = None  # a resumed run must not select again
    resumed.run(tmp_path / "resumed.haba", resume=True)
    assert (tmp_path / "resumed.haba").read_bytes() == whole.path.read_bytes()


def test_a_store_is_read_a_batch_at_a_time_and_selects_what_memory_does(teacher, tmp_path):
    from habactl.data.opening import open_data
    from habactl.store.prepare import prepare

    prepare("digits", tmp_path / "digits.store")
    store = open_data(str(tmp_path / "digits.store"))
    reads = []
    original = store.read

    def counted(split, indices):
        reads.append(len(indices))
        return original(split, indices)

    store.read = counted
    from_store = Distiller(store, config(teacher, "idc"))
    reads.clear()  # what the engine itself read before the objective's step
    from_store.step()
    assert reads and max(reads) <= SETTINGS["batch"]
    assert sum(reads) == 10 * SETTINGS["candidates"]  # the candidates, each read once
    in_memory = Distiller(load_source("digits"), config(teacher, "idc"))
    in_memory.step()
    # the same crops (a store holds uint8 pixels: values agree to their rounding)
    difference = from_store.synthetic.bases.detach() - in_memory.synthetic.bases.detach()
    assert float(difference.abs().max()) < 0.02


def test_a_missing_or_unfit_teacher_or_no_iteration_is_one_line(teacher, tmp_path):
    with pytest.raises(DistillError, match="needs a teacher: --teacher FILE"):
        Distiller(load_source("digits"), DistillConfig(objective="rded", iterations=1))
    with pytest.raises(HabaError) as error:
        Distiller(tiny_mnist(), config(teacher))
    assert "knows 10 classes" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DistillError, match="--iterations must be at least 1"):
        Distiller(load_source("digits"), config(teacher, iterations=0))
    # more bases than crops to choose from
    distiller = Distiller(load_source("digits"), config(teacher, "idc", candidates=1, crops=2))
    with pytest.raises(DistillError, match="needs 4 bases but 1 images x 2 crops"):
        distiller.step()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"candidates": 0}, "rded: candidates must be an integer of at least 1"),
        ({"crops": 1.5}, "rded: crops must be an integer of at least 1"),
        ({"crop_scale": 2.0}, "rded: crop_scale must lie in (0, 1]"),
        ({"views": 1}, "objective rded: unknown setting(s) views"),
    ],
)
def test_bad_settings_are_one_line_errors(teacher, settings, message):
    with pytest.raises(DistillError) as error:
        Distiller(load_source("digits"), config(teacher, **settings))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_compress_command_with_rded(teacher, tmp_path):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401  (registers the command)
    import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
    from habactl.cli.app import app

    runner = CliRunner()
    out = tmp_path / "x.haba"
    line = one_error_line(
        runner.invoke(app, ["compress", "digits", "-o", str(out), "--objective", "rded"])
    )
    assert "--teacher FILE" in line
    args = ["compress", "digits", "-o", str(out), "--objective", "rded", "--teacher", str(teacher)]
    result = runner.invoke(app, [*args, "--codec", "idc", "--candidates", "20"])
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        provenance = archive.manifest["provenance"]
    # one iteration by default: the selection
    assert provenance["iterations"] == 1
    assert provenance["hyperparameters"]["objective"]["candidates"] == 20
    # inspect counts the teacher the recipe needs beside the archive's own bytes
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "with the teacher its recipe needs to train" in shown.output
    assert "× the budget" in shown.output
    # relabelled, its labels are the teacher's outputs stored: no teacher needed to train
    from habactl.labels import relabel

    relabel(out, teacher, tmp_path / "soft.haba", form="float16", allow_over=True)
    recipe = HabaDataset(tmp_path / "soft.haba").recipe
    assert recipe.kind == "kd" and recipe.teacher is None
