"""Recovery from a teacher (`sre2l`) through the engine, at tiny settings (digits)."""

from __future__ import annotations

import pytest
import torch

from habactl.data import load_source
from habactl.distill import DistillConfig, Distiller
from habactl.distill import checkpoint as ckpt
from habactl.distill.errors import DistillError
from habactl.errors import HabaError
from habactl.format import open_archive
from habactl.training.dataset import HabaDataset
from helpers import digits_teacher, one_error_line, tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

CODECS = [("raw", 1), ("idc", 1), ("haba", 2), ("haba+idc", 1)]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("sre2l") / "teacher.safetensors"
    digits_teacher(path)
    return path


def config(
    teacher, codec: str = "raw", ipc: int = 1, iterations: int = 0, **settings
) -> DistillConfig:
    return DistillConfig(
        objective="sre2l",
        codec=codec,
        ipc=ipc,
        iterations=iterations,
        lr_bases=0.25,
        init="noise",
        contrastive=False,
        checkpoint_every=1000,
        contrastive_settings={"batch": 4},
        objective_settings={"teacher": str(teacher), **settings},
    )


@pytest.mark.parametrize("codec, ipc", CODECS)
def test_the_loss_goes_down(teacher, codec, ipc):
    # The same crops and shifts every step: what remains is the optimisation of the stored
    # tensors, which must make the teacher see its statistics and its classes better.
    distiller = Distiller(load_source("digits"), config(teacher, codec, ipc, iterations=100))
    fixed = distiller.generators["objective"].get_state()
    losses = []
    for _ in range(5):
        distiller.generators["objective"].set_state(fixed)
        losses.append(distiller.step()["loss"])
    assert losses[-1] < 0.9 * losses[0], losses


def test_the_batch_norm_distance_and_the_cross_entropy_drop(teacher):
    distiller = Distiller(load_source("digits"), config(teacher, iterations=40))
    records = [distiller.step() for _ in range(40)]
    first, last = records[:5], records[-5:]
    for key in ("bn", "ce"):
        before = sum(r[key] for r in first) / 5
        after = sum(r[key] for r in last) / 5
        assert after < 0.9 * before, (key, before, after)  # measured: about 0.79
    # the teacher now calls half or more of the images their class (noise: 1 in 10;
    # measured: 8 of 10)
    with torch.no_grad():
        images = distiller.synthetic.decode()
        predicted = distiller.objective.teacher.logits(images).argmax(1)
    assert float((predicted == distiller.synthetic.labels).float().mean()) >= 0.5


def test_no_real_image_is_ever_read(teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    distiller = Distiller(load_source("digits"), config(teacher, "haba+idc", iterations=3))

    def refuse(*args, **kwargs):
        raise AssertionError("sre2l read a real image")

    for method in ("sample", "class_images", "read_class"):
        monkeypatch.setattr(distiller.real, method, refuse)
    result = distiller.run(tmp_path / "x.haba")
    with open_archive(result.path) as archive:
        assert archive.info.bases.count == len(distiller.synthetic.bases)


def test_the_images_stay_in_the_pixel_range(teacher):
    distiller = Distiller(load_source("digits"), config(teacher, iterations=5))
    for _ in range(5):
        distiller.step()
    low, high = distiller.objective.bounds
    bases = distiller.synthetic.bases.detach()
    assert bool((bases >= low - 1e-6).all()) and bool((bases <= high + 1e-6).all())
    assert float(bases.max()) == pytest.approx(float(high.max()), abs=1e-5)  # it was clipped


@pytest.mark.parametrize(
    "engine",
    [
        {"codec": "raw"},
        {"codec": "idc"},
        {"codec": "haba", "ipc": 2},
        {"codec": "haba+idc"},
        {"codec": "raw", "quantize": "uint8"},
        {"codec": "haba+idc", "quantize": "float16"},
        {"codec": "idc", "frequency": 8},
        {"codec": "haba+idc", "contrastive": True},
    ],
)
def test_every_codec_runs_and_writes_finite_tensors(teacher, tmp_path, engine):
    base = config(teacher, iterations=2)
    run = DistillConfig(**{**base.__dict__, **engine})
    result = Distiller(load_source("digits"), run).run(tmp_path / "x.haba")
    dataset = HabaDataset(result.path)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert bool(torch.isfinite(images).all())
    with open_archive(result.path) as archive:
        hyper = archive.manifest["provenance"]["hyperparameters"]
    assert hyper["objective"]["name"] == "sre2l" and hyper["optimizer"]["name"] == "adam"


def test_the_archive_records_the_teacher_and_the_schedule(teacher, tmp_path):
    from habactl.teacher import load_teacher

    distiller = Distiller(load_source("digits"), config(teacher, iterations=4))
    learning_rates = []
    for _ in range(4):
        distiller.step()
        learning_rates.append(distiller.optimizer.param_groups[0]["lr"])
    # cosine from 0.25 over 4 iterations: the rates the steps were taken with
    assert learning_rates == pytest.approx(
        [0.25, 0.25 * (1 + 0.5**0.5) / 2, 0.125, 0.25 * (1 - 0.5**0.5) / 2]
    )
    recorded = distiller.hyperparameters["objective"]
    loaded = load_teacher(teacher)
    assert recorded["teacher"]["sha256"] == loaded.sha256
    assert recorded["teacher"]["bytes"] == loaded.file_bytes == teacher.stat().st_size
    assert recorded["r_bn"] == 0.01 and recorded["first_bn_multiplier"] == 10.0
    assert recorded["flip"] is False  # digits


@pytest.mark.parametrize("codec, ipc, contrastive", [("raw", 1, False), ("haba", 2, True)])
def test_resume_equals_an_uninterrupted_run(
    teacher, tmp_path, codec, ipc, contrastive, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = load_source("digits")
    base = config(teacher, codec, ipc, iterations=4, batch=6)  # several batches a step
    base = DistillConfig(**{**base.__dict__, "contrastive": contrastive})
    whole = Distiller(source, base).run(tmp_path / "whole.haba")
    first = Distiller(source, base)
    for _ in range(2):
        first.step()
    ckpt.save(tmp_path / "resumed.haba.ckpt", first._state())
    Distiller(source, base).run(tmp_path / "resumed.haba", resume=True)
    assert (tmp_path / "resumed.haba").read_bytes() == whole.path.read_bytes()


def test_a_missing_or_unfit_teacher_is_one_line(teacher, tmp_path):
    with pytest.raises(DistillError) as error:
        Distiller(load_source("digits"), DistillConfig(objective="sre2l", codec="raw"))
    assert "needs a teacher: --teacher FILE" in str(error.value)
    with pytest.raises(HabaError, match="no such teacher file"):
        Distiller(load_source("digits"), config(tmp_path / "absent.safetensors"))
    # a teacher of the 10 digits classes cannot recover 3 classes of 28x28 images
    with pytest.raises(HabaError) as error:
        Distiller(tiny_mnist(), config(teacher))
    assert "knows 10 classes" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"r_bn": -1.0}, "sre2l: r_bn and first_bn_multiplier must be 0 or more"),
        ({"r_bn": "big"}, "sre2l: r_bn must be a number"),
        ({"batch": 0}, "sre2l: batch must be at least 1"),
        ({"crop_scale": 0.0}, "sre2l: crop_scale must lie in (0, 1]"),
        ({"schedule": "step"}, "sre2l: schedule must be cosine or constant"),
        ({"beta1": 1.0}, "sre2l: beta1 and beta2 must lie in [0, 1)"),
        ({"lambda": 1.0}, "objective sre2l: unknown setting(s) lambda"),
    ],
)
def test_bad_settings_are_one_line_errors(teacher, settings, message):
    with pytest.raises(DistillError) as error:
        Distiller(load_source("digits"), config(teacher, **settings))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_compress_command_with_sre2l(teacher, tmp_path):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401  (registers the command)
    import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
    from habactl.cli.app import app

    runner = CliRunner()
    out = tmp_path / "x.haba"
    line = one_error_line(
        runner.invoke(app, ["compress", "digits", "-o", str(out), "--objective", "sre2l"])
    )
    assert "--teacher FILE" in line
    args = ["compress", "digits", "-o", str(out), "--objective", "sre2l", "--teacher", str(teacher)]
    result = runner.invoke(app, [*args, "--codec", "raw", "--iterations", "2", "--r-bn", "0.05"])
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        hyper = archive.manifest["provenance"]["hyperparameters"]
    # the objective's engine defaults: Adam at 0.25 from noise
    assert hyper["optimizer"]["lr_bases"] == 0.25 and hyper["init"]["bases"] == "noise"
    assert hyper["objective"]["r_bn"] == 0.05


def test_recomputing_the_teachers_batches_changes_nothing_and_keeps_one_batch(teacher, monkeypatch):
    # A large set keeps no batch's teacher activations for the backward pass: each is
    # recomputed there. The run is the same to the bit; what autograd holds is one batch's.
    from habactl.distill.objectives import base

    runs = []
    for bound in (base.RECOMPUTE_ABOVE, 0):  # kept as usual; recomputed
        monkeypatch.setattr(base, "RECOMPUTE_ABOVE", bound)
        distiller = Distiller(
            load_source("digits"), config(teacher, "haba+idc", 1, iterations=2, batch=8)
        )
        held = []

        def pack(tensor, held=held):
            held.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            losses = [distiller.step()["loss"] for _ in range(2)]
        runs.append((losses, distiller.synthetic.bases.detach().clone(), sum(held)))
    (kept_losses, kept_bases, kept_bytes), (losses, bases, recomputed_bytes) = runs
    assert losses == kept_losses and torch.equal(bases, kept_bases)
    pairs = distiller.synthetic.bases.shape[0] * distiller.synthetic.expansion
    assert pairs >= 4 * 8  # several batches, so there is something to save
    assert recomputed_bytes < kept_bytes / 4, (recomputed_bytes, kept_bytes)
