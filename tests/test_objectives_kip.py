"""Kernel inducing points (`kip`) through the engine, at tiny settings (3 mnist-5k classes)."""

from __future__ import annotations

import pytest
import torch

from habactl.distill import DistillConfig, Distiller
from habactl.distill import checkpoint as ckpt
from habactl.distill.errors import DistillError
from habactl.distill.objectives.kip import centred_one_hot, krr_predict
from habactl.format import open_archive
from habactl.training.dataset import HabaDataset
from helpers import one_error_line, tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"real_per_class": 8, "embed_width": 0.25}


def config(
    codec: str = "raw", ipc: int = 1, iterations: int = 0, lr: float = 2000.0, **settings
) -> DistillConfig:
    return DistillConfig(
        objective="kip",
        codec=codec,
        ipc=ipc,
        iterations=iterations,
        lr_bases=lr,
        momentum=0.9,
        augment="none",
        contrastive=False,
        checkpoint_every=1000,
        contrastive_settings={"batch": 4},
        objective_settings={**SETTINGS, **settings},
    )


@pytest.mark.parametrize("codec, ipc", [("raw", 1), ("idc", 1), ("haba", 2), ("haba+idc", 1)])
def test_the_loss_goes_down(codec, ipc):
    # The same networks and real batch every step: what remains is the optimisation of
    # the stored tensors, which must make the regression predict the batch better (at a
    # step size that does not overshoot within four steps of momentum 0.9).
    distiller = Distiller(tiny_mnist(), config(codec, ipc, lr=300.0))
    fixed = distiller.generators["objective"].get_state()
    losses = []
    for _ in range(4):
        distiller.generators["objective"].set_state(fixed)
        losses.append(distiller.step()["loss"])
    assert losses[-1] < 0.97 * losses[0], losses


def test_the_regression_learns_to_predict_real_images_it_has_not_seen():
    # Fresh networks and real batches every iteration: the support set's accuracy on the
    # real batch, before a step, rises from where the real images it started as left it.
    distiller = Distiller(tiny_mnist(classes=3, train_per_class=40), config(iterations=30))
    accuracies = [distiller.step()["krr_accuracy"] for _ in range(30)]
    first, last = sum(accuracies[:10]) / 10, sum(accuracies[-10:]) / 10
    assert last > first, (first, last)


def test_krr_interpolates_its_support_and_its_ridge_follows_the_kernel_scale():
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(6, 40, generator=generator, dtype=torch.float64)
    labels = centred_one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 3, torch.float64)
    assert torch.allclose(labels.sum(dim=1), torch.zeros(6, dtype=torch.float64))
    predicted, _ = krr_predict(support, support, labels, 1e-9)
    assert torch.allclose(predicted, labels, atol=1e-6)
    # The ridge is relative to tr K / n: scaling the features changes no prediction.
    targets = torch.randn(5, 40, generator=generator, dtype=torch.float64)
    one, _ = krr_predict(support, targets, labels, 0.1)
    scaled, _ = krr_predict(30 * support, 30 * targets, labels, 0.1)
    assert torch.allclose(one, scaled, atol=1e-9)
    # A larger ridge pulls every prediction towards zero.
    assert float(krr_predict(support, targets, labels, 100.0)[0].abs().max()) < float(
        one.abs().max()
    )


def test_float32_solve_is_close_to_float64_on_raw_images():
    losses = []
    for dtype in ("float64", "float32"):
        distiller = Distiller(tiny_mnist(), config(solve_dtype=dtype))
        loss, _ = distiller.objective.loss(distiller.synthetic, torch.Generator().manual_seed(5))
        losses.append(float(loss.detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"models": 0}, "kip: models must be at least 1, got 0"),
        ({"reg": -1.0}, "kip: reg must be positive, got -1.0"),
        ({"reg": "big"}, "kip: reg must be a number, got 'big'"),
        ({"views": -1}, "kip: views must be 0 (all) or more"),
        ({"real_per_class": 2.5}, "kip: real_per_class must be an integer"),
        ({"real_per_class": 21}, "--real-per-class 21 asks for more real images than class"),
        ({"solve_dtype": "float16"}, "kip: solve_dtype must be one of float64, float32"),
        ({"lambda": 1.0}, "objective kip: unknown setting(s) lambda"),
    ],
)
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(DistillError) as error:
        Distiller(tiny_mnist(), config(**settings))
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("codec, ipc, contrastive", [("raw", 1, False), ("haba", 2, True)])
def test_archive_round_trips_and_resume_equals_an_uninterrupted_run(
    tmp_path, codec, ipc, contrastive, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = tiny_mnist()
    base = config(codec, ipc, iterations=4, models=2, views=1 if codec == "haba" else 0)
    base = DistillConfig(**{**base.__dict__, "contrastive": contrastive})
    whole = Distiller(source, base).run(tmp_path / "whole.haba")

    first = Distiller(source, base)
    for _ in range(2):
        first.step()
    ckpt.save(tmp_path / "resumed.haba.ckpt", first._state())
    resumed = Distiller(source, base).run(tmp_path / "resumed.haba", resume=True)
    assert resumed.resumed_from == 2
    assert (tmp_path / "resumed.haba").read_bytes() == whole.path.read_bytes()

    with open_archive(whole.path) as archive:
        manifest = archive.manifest
    hyper = manifest["provenance"]["hyperparameters"]["objective"]
    assert manifest["provenance"]["objective"] == "kip"
    assert (hyper["models"], hyper["reg"], hyper["solve_dtype"]) == (2, 1e-6, "float64")
    assert manifest["labels"]["kind"] == "hard" and manifest["training"]["learned_lr"] is None
    dataset = HabaDataset(whole.path)
    images, labels = dataset.fetch(torch.arange(len(dataset)))
    assert images.shape[1:] == (1, 28, 28) and bool(torch.isfinite(images).all())
    assert sorted(set(labels.tolist())) == [0, 1, 2]


@pytest.mark.parametrize(
    "changes",
    [
        {"codec": "idc"},
        {"codec": "haba+idc", "contrastive": True},
        {"codec": "raw", "quantize": "uint8"},
        {"codec": "idc", "quantize": "float16"},
        {"codec": "raw", "frequency": 60},
        {"codec": "haba+idc", "frequency": 40, "frequency_mask": "per-class", "quantize": "uint4"},
        {"codec": "raw", "augment": "color_crop_cutout_flip_scale_rotate"},
        {"codec": "raw", "classes_per_iteration": 2},
    ],
)
def test_every_stage_and_option_runs_and_stores_finite_tensors(tmp_path, changes):
    base = config(iterations=2)
    run = DistillConfig(**{**base.__dict__, **changes})
    distiller = Distiller(tiny_mnist(), run)
    result = distiller.run(tmp_path / "a.haba")
    assert result.final_loss is not None and result.final_loss == result.final_loss
    with open_archive(result.path) as archive:
        tensors = archive.tensors()
        names = [entry["name"] for entry in archive.manifest["pipeline"]]
    assert all(bool(torch.isfinite(t.float()).all()) for t in tensors.values())
    if "quantize" in changes:
        assert names[0] == "quantize"
    if "frequency" in changes:
        assert "frequency" in names
    dataset = HabaDataset(result.path)
    images, _ = dataset.fetch(torch.arange(len(dataset)))
    assert bool(torch.isfinite(images).all())


@pytest.mark.slow
def test_compress_command_with_kip_from_a_config_file(tmp_path):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401  (registers the command)
    import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
    from habactl.cli.app import app

    recipe = tmp_path / "kip.toml"
    recipe.write_text(
        'data = "digits"\nobjective = "kip"\ncodec = "raw"\niterations = 2\nthreads = 1\n'
        "[settings]\nreal_per_class = 4\nmodels = 2\nreg = 1e-4\n"
    )
    out = tmp_path / "kip.haba"
    runner = CliRunner()
    result = runner.invoke(app, ["compress", "--config", str(recipe), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        provenance = archive.manifest["provenance"]
    hyper = provenance["hyperparameters"]
    assert provenance["objective"] == "kip"
    assert (hyper["objective"]["models"], hyper["objective"]["reg"]) == (2, 1e-4)
    # the objective's engine defaults, as `compress --objective kip` uses them
    assert (hyper["optimizer"]["lr_bases"], hyper["optimizer"]["momentum"]) == (2000.0, 0.9)
    assert hyper["augmentation"]["strategy"] == "none"

    recipe.write_text('data = "digits"\nobjective = "kip"\ncodec = "raw"\n[settings]\nmodels = 0\n')
    bad = runner.invoke(app, ["compress", "--config", str(recipe), "-o", str(tmp_path / "b.haba")])
    assert "kip: models must be at least 1, got 0" in one_error_line(bad)
    assert not (tmp_path / "b.haba").exists()


@pytest.mark.slow
def test_kip_on_two_ranks_takes_the_step_of_one_process(tmp_path):
    # The real batch's classes are dealt to the ranks; each rank's loss is its share of
    # the batch's sum, so the summed gradient is the one process's (up to rounding).
    from helpers import TORCHRUN, assert_same_step, one_process_and_two_ranks

    if not TORCHRUN.exists():
        pytest.skip("torchrun not installed")
    args = ("compress", "digits", "--objective", "kip", "--codec", "raw", "--ipc", "1",
            "--iterations", "2", "--real-per-class", "8", "--threads", "1", "-q")  # fmt: skip
    single, split = one_process_and_two_ranks(tmp_path, *args)
    for name in single:
        assert not torch.equal(single[name], torch.zeros_like(single[name]))
    # the solve amplifies the rounding of the ranks' sums: still the same bound
    assert_same_step(single, split)
