"""Gradient matching (`dc`, `dsa`) through the engine, at tiny settings (3 mnist-5k classes)."""

from __future__ import annotations

import pytest
import torch

from habactl.distill import DistillConfig, Distiller
from habactl.distill import checkpoint as ckpt
from habactl.distill.objectives import get_objective
from habactl.distill.objectives.dc import layer_distance, loops_for_ipc
from habactl.format import open_archive
from habactl.training.dataset import HabaDataset
from helpers import matching_config, tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"real_per_class": 8, "net_width": 0.25}


def config(objective: str, codec: str, ipc: int, iterations: int = 0, **settings) -> DistillConfig:
    return matching_config(objective, SETTINGS, codec, ipc, iterations, **settings)


@pytest.mark.parametrize(
    "objective, codec, ipc",
    [
        ("dc", "raw", 1),
        ("dc", "idc", 1),
        ("dc", "haba", 2),
        ("dsa", "raw", 1),
        ("dsa", "haba", 2),
        ("dsa", "haba+idc", 1),
    ],
)
def test_the_loss_goes_down(objective, codec, ipc):
    # The same network, real batch and augmentation every step: what remains is the
    # optimisation of the stored tensors, which must reduce the matching distance.
    distiller = Distiller(tiny_mnist(), config(objective, codec, ipc, outer_loop=1, inner_loop=0))
    fixed = distiller.generators["objective"].get_state()
    losses = []
    for _ in range(4):
        distiller.generators["objective"].set_state(fixed)
        losses.append(distiller.step()["loss"])
    assert losses[-1] < 0.97 * losses[0], losses


@pytest.mark.parametrize(
    "objective, codec, ipc, contrastive", [("dc", "haba", 2, True), ("dsa", "raw", 1, False)]
)
def test_archive_round_trips_and_resume_equals_an_uninterrupted_run(
    tmp_path, objective, codec, ipc, contrastive, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = tiny_mnist()
    base = config(objective, codec, ipc, iterations=4, outer_loop=2, inner_loop=1)
    base = DistillConfig(**{**base.__dict__, "contrastive": contrastive})
    whole = Distiller(source, base).run(tmp_path / "whole.haba")

    # Stop after iteration 3 (in the middle of a network's outer loop), then resume.
    first = Distiller(source, base)
    for _ in range(3):
        first.step()
    checkpoint = tmp_path / "resumed.haba.ckpt"
    ckpt.save(checkpoint, first._state())
    resumed = Distiller(source, base).run(tmp_path / "resumed.haba", resume=True)
    assert resumed.resumed_from == 3
    assert (tmp_path / "resumed.haba").read_bytes() == whole.path.read_bytes()

    with open_archive(whole.path) as archive:
        manifest = archive.manifest
    hyper = manifest["provenance"]["hyperparameters"]["objective"]
    assert manifest["provenance"]["objective"] == objective
    assert (hyper["name"], hyper["outer_loop"], hyper["inner_loop"]) == (objective, 2, 1)
    assert hyper["siamese_augmentation"] == (objective == "dsa")
    assert manifest["training"]["learned_lr"] is None
    dataset = HabaDataset(whole.path)
    images, labels = dataset.fetch(torch.arange(len(dataset)))
    assert images.shape[1:] == (1, 28, 28) and bool(torch.isfinite(images).all())
    assert sorted(set(labels.tolist())) == [0, 1, 2]


def test_loops_follow_the_reference_table_and_can_be_overridden():
    assert (
        loops_for_ipc(1) == (1, 1)
        and loops_for_ipc(10) == (10, 50)
        and loops_for_ipc(50) == (50, 10)
    )
    assert loops_for_ipc(5) == (1, 1) and loops_for_ipc(15) == (10, 50)
    source = tiny_mnist()
    made = Distiller(source, config("dc", "raw", 10))
    assert (made.objective.settings.outer_loop, made.objective.settings.inner_loop) == (
        10,
        50,
    )
    made = Distiller(source, config("dsa", "raw", 10, outer_loop=3, inner_loop=0))
    assert (made.objective.settings.outer_loop, made.objective.settings.inner_loop) == (3, 0)
    assert (
        get_objective("dsa").siamese_augmentation and not get_objective("dc").siamese_augmentation
    )


def test_layer_distance_is_per_output_unit_cosine():
    real = torch.randn(2, 4, 3, 3, 3)
    assert float(layer_distance(real, real)) == pytest.approx(0.0, abs=1e-5)
    assert float(layer_distance(real, -real)) == pytest.approx(2 * 2 * 4, rel=1e-5)
    assert float(layer_distance(real, 5 * real)) == pytest.approx(0.0, abs=1e-5)  # scale-free


def test_compress_command_with_dc_and_dsa(tmp_path):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401  (registers the command)
    import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
    from habactl.cli.app import app

    for objective in ("dc", "dsa"):
        out = tmp_path / f"{objective}.haba"
        result = CliRunner().invoke(
            app,
            [
                "compress",
                "digits",
                "-o",
                str(out),
                "--objective",
                objective,
                "--codec",
                "raw",
                "--iterations",
                "2",
                "--real-per-class",
                "4",
                "--outer-loop",
                "2",
                "--inner-loop",
                "1",
                "--threads",
                "1",
                "-q",
            ],
        )
        assert result.exit_code == 0, result.output
        with open_archive(out) as archive:
            provenance = archive.manifest["provenance"]
        hyper = provenance["hyperparameters"]
        assert provenance["objective"] == objective
        assert (
            hyper["optimizer"]["lr_bases"] == 0.1
        )  # the reference's image lr for gradient matching
        assert hyper["augmentation"]["strategy"] == (
            "none" if objective == "dc" else "color_crop_cutout_flip_scale_rotate"
        )
        assert (hyper["objective"]["outer_loop"], hyper["objective"]["inner_loop"]) == (2, 1)


def test_per_class_loop_and_vmap_agree():
    results = []
    for mode in ("loop", "vmap"):
        distiller = Distiller(tiny_mnist(), config("dsa", "haba", 2, per_class=mode))
        loss, _ = distiller.objective.loss(distiller.synthetic, torch.Generator().manual_seed(3))
        results.append((loss, torch.autograd.grad(loss, [distiller.synthetic.bases])[0]))
    assert float(results[0][0].detach()) == pytest.approx(float(results[1][0].detach()), rel=1e-4)
    assert torch.allclose(
        results[0][1], results[1][1], rtol=1e-3, atol=1e-5 * float(results[0][1].abs().max())
    )
