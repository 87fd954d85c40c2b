"""Gradient matching with contrastive signals (`dcc`) through the engine, at tiny settings
(3 mnist-5k classes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from habactl.distill import DistillConfig, Distiller
from habactl.distill import checkpoint as ckpt
from habactl.distill.errors import DistillError
from habactl.distill.objectives.dc import layer_distance
from habactl.format import open_archive
from habactl.nets import seeded as networks
from habactl.training.dataset import HabaDataset
from helpers import matching_config, one_error_line, tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"real_per_class": 8, "net_width": 0.25}


def config(codec: str = "raw", ipc: int = 1, iterations: int = 0, **options) -> DistillConfig:
    return matching_config("dcc", SETTINGS, codec, ipc, iterations, **options)


@pytest.mark.parametrize(
    "codec, ipc, augment",
    [("raw", 1, "none"), ("idc", 1, "none"), ("haba", 2, None), ("haba+idc", 1, None)],
)
def test_the_loss_goes_down(codec, ipc, augment):
    # The same network, real batch and augmentation every step: what remains is the
    # optimisation of the stored tensors, which must reduce the contrastive distance.
    options = {} if augment is None else {"augment": augment}
    distiller = Distiller(tiny_mnist(), config(codec, ipc, outer_loop=1, inner_loop=0, **options))
    fixed = distiller.generators["objective"].get_state()
    losses = []
    for _ in range(4):
        distiller.generators["objective"].set_state(fixed)
        losses.append(distiller.step()["loss"])
    assert losses[-1] < 0.97 * losses[0], losses


def test_the_match_is_of_gradients_summed_over_classes():
    # Recomputed by hand from the same draws: the mean over classes of each class's
    # real-batch gradient against the gradient of the class-balanced synthetic loss,
    # one cosine distance per output unit of each weight (not one per class).
    distiller = Distiller(tiny_mnist(), config("haba", 2, augment="none"))
    objective, synthetic = distiller.objective, distiller.synthetic
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    loss, _ = objective.loss(synthetic, generator)

    generator.set_state(state)
    net = objective.net
    networks.redraw(net, generator)
    real = distiller.real.sample(8, generator)  # (3, 8, C, H, W)
    weights = [p for p in net.parameters() if p.dim() > 1]
    summed = [torch.zeros_like(w) for w in weights]
    for c, row in enumerate(real):
        target = torch.full((8,), c)
        for total, g in zip(
            summed, torch.autograd.grad(F.cross_entropy(net(row), target), weights)
        ):
            total += g / 3
    images = synthetic.decode().detach()  # every basis through every hallucinator
    labels = synthetic.labels.repeat_interleave(synthetic.expansion)
    balanced = (
        sum(
            F.cross_entropy(net(images[labels == c]), torch.full((int((labels == c).sum()),), c))
            for c in range(3)
        )
        / 3
    )
    g_syn = torch.autograd.grad(balanced, weights)
    expected = sum(float(layer_distance(r[None], s[None])) for r, s in zip(summed, g_syn))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


def test_warmup_matches_class_by_class_first():
    # Within the warm-up fraction of --iterations the loss is dsa's (the class-wise match,
    # with the same augmentation), to the bit; after it, the contrastive one.
    source = tiny_mnist()
    warm = Distiller(source, config("raw", 1, iterations=4, warmup=0.5))
    same = DistillConfig(**{**config("raw", 1, iterations=4).__dict__, "objective": "dsa"})
    dsa = Distiller(source, same)
    assert warm.objective.warmup_iterations() == 2
    warm_losses = [warm.step()["loss"] for _ in range(3)]
    dsa_losses = [dsa.step()["loss"] for _ in range(3)]
    assert warm_losses[:2] == dsa_losses[:2]
    assert warm_losses[2] != dsa_losses[2]
    assert Distiller(source, config("raw", 1, iterations=4)).objective.warmup_iterations() == 1


def test_augmentation_follows_the_engine_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = tiny_mnist()
    plain = Distiller(source, config("raw", 1, augment="none"))
    dsac = Distiller(source, config("raw", 1))
    assert not plain.objective.siamese_augmentation and dsac.objective.siamese_augmentation
    hyper = dsac.hyperparameters
    assert hyper["objective"]["siamese_augmentation"] is True
    assert hyper["objective"]["warmup"] == 0.25
    assert hyper["augmentation"]["strategy"] == "color_crop_cutout_flip_scale_rotate"


@pytest.mark.parametrize(
    "codec, ipc, contrastive, extra",
    [("haba", 2, True, {}), ("raw", 1, False, {"augment": "none"})],
)
def test_archive_round_trips_and_resume_equals_an_uninterrupted_run(
    tmp_path, codec, ipc, contrastive, extra, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = tiny_mnist()
    # 4 iterations, the first 2 class by class; stop after 3, in a network's outer loop.
    base = config(codec, ipc, iterations=4, outer_loop=2, inner_loop=1, warmup=0.5, **extra)
    base = DistillConfig(**{**base.__dict__, "contrastive": contrastive})
    whole = Distiller(source, base).run(tmp_path / "whole.haba")

    first = Distiller(source, base)
    for _ in range(3):
        first.step()
    ckpt.save(tmp_path / "resumed.haba.ckpt", first._state())
    resumed = Distiller(source, base).run(tmp_path / "resumed.haba", resume=True)
    assert resumed.resumed_from == 3
    assert (tmp_path / "resumed.haba").read_bytes() == whole.path.read_bytes()

    with open_archive(whole.path) as archive:
        manifest = archive.manifest
    hyper = manifest["provenance"]["hyperparameters"]["objective"]
    assert manifest["provenance"]["objective"] == "dcc"
    assert (hyper["outer_loop"], hyper["inner_loop"], hyper["warmup"]) == (2, 1, 0.5)
    dataset = HabaDataset(whole.path)
    images, labels = dataset.fetch(torch.arange(len(dataset)))
    assert images.shape[1:] == (1, 28, 28) and bool(torch.isfinite(images).all())
    assert sorted(set(labels.tolist())) == [0, 1, 2]


@pytest.mark.parametrize(
    "codec, ipc, extra",
    [
        ("raw", 1, {}),
        ("idc", 1, {}),
        ("haba", 2, {}),
        ("haba+idc", 1, {}),
        ("raw", 2, {"quantize": "uint8"}),
        ("idc", 1, {"frequency": 40}),
    ],
)
def test_every_codec_runs_and_stores_finite_tensors(tmp_path, codec, ipc, extra):
    result = Distiller(tiny_mnist(), config(codec, ipc, iterations=2, views=1, **extra)).run(
        tmp_path / "a.haba"
    )
    with open_archive(result.path) as archive:
        tensors = archive.tensors()
    assert all(bool(torch.isfinite(t.float()).all()) for t in tensors.values())


@pytest.mark.parametrize("warmup", [-0.1, 1.5, "half", True])
def test_a_bad_warmup_is_refused(warmup):
    with pytest.raises(DistillError, match="dcc: warmup must be a fraction from 0 to 1"):
        Distiller(tiny_mnist(), config(warmup=warmup))


def test_settings_errors_are_one_line_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401  (registers the command)
    import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
    from habactl.cli.app import app

    recipe = tmp_path / "c.toml"
    recipe.write_text('objective = "dcc"\n[settings]\nwarmup = 2.0\n')
    args = ["compress", "digits", "--config", str(recipe), "-o", str(tmp_path / "x.haba")]
    result = CliRunner().invoke(app, args)
    assert "dcc: warmup must be a fraction from 0 to 1, got 2.0" in one_error_line(result)
    recipe.write_text('objective = "dcc"\n[settings]\nwarm_up = 0.5\n')
    result = CliRunner().invoke(app, args)
    assert "objective dcc has no setting 'warm_up'" in one_error_line(result)


def test_compress_command_with_dcc(tmp_path):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401
    import habactl.cli.inspect_cmd  # noqa: F401
    from habactl.cli.app import app

    out = tmp_path / "dcc.haba"
    args = ["compress", "digits", "-o", str(out), "--objective", "dcc", "--codec", "raw"]
    args += ["--iterations", "2", "--real-per-class", "4", "--threads", "1", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        hyper = archive.manifest["provenance"]["hyperparameters"]
    assert hyper["objective"]["name"] == "dcc" and hyper["optimizer"]["lr_bases"] == 0.1
    assert hyper["objective"]["real_per_class"] == 4


# -- the device path and torchrun ---------------------------------------------------------
@pytest.fixture
def on_meta(monkeypatch):
    """Every device name answers ``meta``; the engine's per-iteration read is counted (as
    in tests/test_device_path.py)."""
    from habactl.runtime import device as runtime

    reads: list[list[str]] = []

    def host_values(values):
        reads.append(sorted(values))
        return {k: 0.0 for k in values}

    monkeypatch.setattr(runtime, "resolve_device", lambda name: torch.device("meta"))
    monkeypatch.setattr(runtime, "host_values", host_values)
    return reads


def test_an_iteration_waits_for_its_device_once(on_meta):
    from device_watch import HostTensorWatch, device_tensors

    settings = {"real_per_class": 4, "outer_loop": 2, "inner_loop": 1}
    made = DistillConfig(
        objective="dcc",
        codec="haba",
        ipc=2,
        iterations=4,  # warm-up: the first (dc's match), then the contrastive one
        device="cpu",
        contrastive_settings={"batch": 4},
        objective_settings=settings,
    )
    distiller = Distiller(tiny_mnist(), made)
    off = [name for name, t in device_tensors(distiller).items() if t.device.type != "meta"]
    assert not off, f"not on the run's device: {off}"
    watch = HostTensorWatch()
    with watch:
        records = [distiller.step() for _ in range(2)]
    assert not watch.stray, "host tensors mixed into device ops:\n" + "\n".join(watch.stray)
    assert len(on_meta) == 2 and "dcc" in on_meta[0]
    assert set(records[-1]) == set(on_meta[-1])


@pytest.mark.slow
def test_two_ranks_take_the_step_of_one_process(tmp_path):
    # The real side split by classes, the real gradients summed over the ranks, the
    # synthetic side whole on each: one iteration gives the one-process step (as for dsa,
    # later iterations amplify the last-bit differences of the summation order).
    from helpers import assert_same_step, needs_torchrun, one_process_and_two_ranks

    if needs_torchrun.args[0]:
        pytest.skip("torchrun not installed")
    args = ("compress", "digits", "--objective", "dcc", "--ipc", "1", "--iterations", "1",
            "--threads", "1", "-q")  # fmt: skip
    assert_same_step(*one_process_and_two_ranks(tmp_path, *args))
