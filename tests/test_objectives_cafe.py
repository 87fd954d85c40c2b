"""Feature alignment (`cafe`) through the engine, at tiny settings (3 mnist-5k classes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from habactl.distill import DistillConfig, Distiller
from habactl.distill import checkpoint as ckpt
from habactl.distill.errors import DistillError
from habactl.distill.objectives.cafe import _features
from habactl.format import open_archive
from habactl.nets import seeded as networks
from habactl.training.dataset import HabaDataset
from helpers import matching_config, one_error_line, tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"real_per_class": 8, "net_width": 0.25, "probe_per_class": 4}
FIXED = {"schedule": "fixed", "outer_loop": 1, "inner_loop": 0}


def config(codec: str = "raw", ipc: int = 1, iterations: int = 0, **options) -> DistillConfig:
    return matching_config(
        "cafe", SETTINGS, codec, ipc, iterations, engine={"augment": "none"}, **options
    )


@pytest.mark.parametrize(
    "codec, ipc, augment",
    [("raw", 1, "none"), ("idc", 1, "none"), ("haba", 2, "none"), ("haba+idc", 1, None)],
)
def test_the_loss_goes_down(codec, ipc, augment):
    # The same network, real batch and augmentation every step: what remains is the
    # optimisation of the stored tensors, which must reduce the loss.
    options = {"augment": "color_crop_cutout_scale_rotate"} if augment is None else {}
    distiller = Distiller(tiny_mnist(), config(codec, ipc, **FIXED, **options))
    fixed = distiller.generators["objective"].get_state()
    losses = []
    for _ in range(4):
        distiller.generators["objective"].set_state(fixed)
        losses.append(distiller.step()["loss"])
    assert losses[-1] < 0.97 * losses[0], losses


def test_the_loss_is_layer_wise_alignment_plus_discrimination():
    # Recomputed by hand from the same draws: per class, weighted squared distances of
    # each block's mean output and of the mean embedding; plus the cross-entropy of the
    # real embeddings scored against the synthetic class-mean embeddings.
    weights = {"early_weight": 0.3, "last_weight": 0.7, "embedding_weight": 1.5}
    settings = {**FIXED, **weights, "discrimination_weight": 0.5}
    distiller = Distiller(tiny_mnist(), config("haba", 2, **settings))
    objective, synthetic = distiller.objective, distiller.synthetic
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    loss, _ = objective.loss(synthetic, generator)

    generator.set_state(state)
    net = objective.net
    networks.redraw(net, generator)
    real = distiller.real.sample(8, generator)  # (3, 8, C, H, W)
    images = synthetic.decode().detach()
    labels = synthetic.labels.repeat_interleave(synthetic.expansion)
    layer_weights = [0.3, 0.3, 0.7, 1.5]  # blocks 1, 2, 3 (the last), the embedding
    expected, centres = 0.0, []
    with torch.no_grad():
        for c in range(3):
            blocks, embedded = _features(net, real[c])
            syn_blocks, syn_embedded = _features(net, images[labels == c])
            pairs = zip([*blocks, embedded], [*syn_blocks, syn_embedded])
            for w, (r, s) in zip(layer_weights, pairs):
                expected += w * float((r.mean(0) - s.mean(0)).square().sum())
            centres.append(syn_embedded.mean(0))
        scores = _features(net, real.flatten(0, 1))[1] @ torch.stack(centres).t()
        cross = F.cross_entropy(scores, torch.arange(3).repeat_interleave(8), reduction="sum")
    expected += 0.5 * float(cross) / 8
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


def test_features_are_the_blocks_and_the_embedding():
    distiller = Distiller(tiny_mnist(), config(**FIXED))
    net = distiller.objective.net
    x = torch.randn(4, 1, 28, 28)
    blocks, embedded = _features(net, x)
    assert [tuple(b.shape[1:]) for b in blocks] == [(32, 32, 32), (32, 16, 16), (32, 8, 8)]
    assert torch.equal(embedded, net.embed(x))


class Scripted:
    """Probe accuracies in a given order; counts the inner epochs."""

    def __init__(self, objective, accuracies):
        self.values, self.epochs = list(accuracies), 0
        objective._probe_accuracy = lambda: self.values.pop(0)
        objective._train_epoch = lambda *args: setattr(self, "epochs", self.epochs + 1)


def test_the_dynamic_schedule_follows_the_probe_accuracy():
    settings = {"window": 3, "max_outer": 5, "max_inner": 4}
    distiller = Distiller(tiny_mnist(), config(**settings))
    objective, synthetic, generator = distiller.objective, distiller.synthetic, torch.Generator()
    objective.outer = 0
    # outer step 1: not yet a window of outer accuracies; the inner loop stops as soon as
    # three epochs span more than 0.03
    script = Scripted(objective, [0.1, 0.2, 0.3, 0.4])
    objective.after_step(synthetic, generator)
    assert (objective.outer, script.epochs, script.values) == (1, 3, [])
    # outer step 2: the network no longer moves: the inner loop runs to max_inner
    script = Scripted(objective, [0.5, 0.5, 0.5, 0.5, 0.5])
    objective.after_step(synthetic, generator)
    assert (objective.outer, script.epochs) == (2, 4)
    script = Scripted(objective, [0.51, 0.6, 0.7, 0.8])
    objective.after_step(synthetic, generator)
    assert (objective.outer, script.epochs) == (3, 3)
    # outer step 4: the last three outer accuracies (0.5, 0.51, 0.52) span under 0.04:
    # settled, no inner training, and the next iteration draws a new network
    script = Scripted(objective, [0.52])
    objective.after_step(synthetic, generator)
    assert (objective.outer, script.epochs, objective.outer_accuracies) == (0, 0, [])
    # max_outer bounds a network that never settles
    for step in range(5):
        script = Scripted(objective, [0.1 * (step % 2), 0.0, 0.5, 0.0, 0.5])
        objective.after_step(synthetic, generator)
    assert objective.outer == 0 and script.epochs == 0


def test_the_fixed_schedule_uses_the_counts():
    distiller = Distiller(tiny_mnist(), config(schedule="fixed", outer_loop=3, inner_loop=2))
    objective = distiller.objective
    script = Scripted(objective, [])
    objective.after_step(distiller.synthetic, torch.Generator())
    objective.after_step(distiller.synthetic, torch.Generator())
    assert (objective.outer, script.epochs) == (2, 4)
    objective.after_step(distiller.synthetic, torch.Generator())
    assert (objective.outer, script.epochs) == (0, 4)
    ipc10 = Distiller(tiny_mnist(train_per_class=30), config(ipc=10, schedule="fixed"))
    assert (ipc10.objective.settings.outer_loop, ipc10.objective.settings.inner_loop) == (10, 50)


@pytest.mark.parametrize(
    "codec, ipc, contrastive, extra",
    [("haba", 2, True, {}), ("raw", 1, False, {"augment": "color_crop_cutout_scale_rotate"})],
)
def test_archive_round_trips_and_resume_equals_an_uninterrupted_run(
    tmp_path, codec, ipc, contrastive, extra, monkeypatch
):
    # The dynamic schedule: a resume must carry the network, its probe and the outer
    # accuracies seen so far, or its decisions (and the archive) would differ.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = tiny_mnist()
    # outer_tolerance 0: no network settles; each lives max_outer 3 steps.
    options = {"window": 2, "max_inner": 2, "max_outer": 3, "outer_tolerance": 0.0}
    base = config(codec, ipc, iterations=5, **options, **extra)
    base = DistillConfig(**{**base.__dict__, "contrastive": contrastive})
    whole = Distiller(source, base).run(tmp_path / "whole.haba")

    first = Distiller(source, base)
    for _ in range(2):
        first.step()
    assert first.objective.outer == 2 and first.objective.probe is not None
    ckpt.save(tmp_path / "resumed.haba.ckpt", first._state())
    resumed = Distiller(source, base).run(tmp_path / "resumed.haba", resume=True)
    assert resumed.resumed_from == 2
    assert (tmp_path / "resumed.haba").read_bytes() == whole.path.read_bytes()

    with open_archive(whole.path) as archive:
        manifest = archive.manifest
    hyper = manifest["provenance"]["hyperparameters"]["objective"]
    assert manifest["provenance"]["objective"] == "cafe"
    assert (hyper["schedule"], hyper["window"], hyper["max_inner"]) == ("dynamic", 2, 2)
    assert hyper["outer_loop"] is None and hyper["discrimination_weight"] == 2.56
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
    options = {"views": 1, "window": 2, "max_inner": 2, **extra}
    result = Distiller(tiny_mnist(), config(codec, ipc, iterations=2, **options)).run(
        tmp_path / "a.haba"
    )
    with open_archive(result.path) as archive:
        tensors = archive.tensors()
    assert all(bool(torch.isfinite(t.float()).all()) for t in tensors.values())


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"schedule": "slow"}, "cafe: schedule must be 'dynamic' or 'fixed', got 'slow'"),
        ({"outer_loop": 3}, "cafe: outer_loop applies to schedule 'fixed' only"),
        ({"window": 1}, "cafe: window must be at least 2, got 1"),
        ({"early_weight": -1.0}, "cafe: early_weight must be a number >= 0, got -1.0"),
        ({"net_arch": "mlp"}, "cafe: net_arch must be a ConvNet"),
        ({"probe_per_class": 50}, "probe_per_class 50 asks for more real images than class"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(DistillError, match=message.replace("(", r"\(")):
        Distiller(tiny_mnist(), config(**settings))


def test_settings_errors_are_one_line_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401  (registers the command)
    import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
    from habactl.cli.app import app

    out = str(tmp_path / "x.haba")
    result = CliRunner().invoke(
        app, ["compress", "digits", "--objective", "cafe", "--outer-loop", "2", "-o", out]
    )
    assert "cafe: outer_loop applies to schedule 'fixed' only" in one_error_line(result)
    recipe = tmp_path / "c.toml"
    recipe.write_text('objective = "cafe"\n[settings]\nnet_arch = "vgg11"\n')
    result = CliRunner().invoke(app, ["compress", "digits", "--config", str(recipe), "-o", out])
    assert "cafe: net_arch must be a ConvNet" in one_error_line(result)


def test_compress_command_with_cafe(tmp_path):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401
    import habactl.cli.inspect_cmd  # noqa: F401
    from habactl.cli.app import app

    recipe = tmp_path / "c.toml"
    recipe.write_text('[settings]\nschedule = "fixed"\nprobe_per_class = 2\n')
    out = tmp_path / "cafe.haba"
    args = ["compress", "digits", "-o", str(out), "--objective", "cafe", "--codec", "raw"]
    args += ["--iterations", "2", "--real-per-class", "4", "--outer-loop", "2"]
    args += ["--config", str(recipe), "--threads", "1", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        hyper = archive.manifest["provenance"]["hyperparameters"]
    assert hyper["objective"]["name"] == "cafe" and hyper["optimizer"]["lr_bases"] == 0.1
    assert hyper["augmentation"]["strategy"] == "none"
    assert (hyper["objective"]["schedule"], hyper["objective"]["outer_loop"]) == ("fixed", 2)


# -- the device path and torchrun ---------------------------------------------------------
@pytest.fixture
def on_meta(monkeypatch):
    """Every device name answers ``meta``; every read of a device value is counted (as in
    tests/test_device_path.py) and answers 0."""
    from habactl.runtime import device as runtime

    reads: list[list[str]] = []

    def host_values(values):
        reads.append(sorted(values))
        return {k: 0.0 for k in values}

    monkeypatch.setattr(runtime, "resolve_device", lambda name: torch.device("meta"))
    monkeypatch.setattr(runtime, "host_values", host_values)
    return reads


@pytest.mark.parametrize("schedule", ["fixed", "dynamic"])
def test_an_iteration_reads_the_device_only_where_the_schedule_decides(on_meta, schedule):
    from device_watch import HostTensorWatch, device_tensors

    settings = {"real_per_class": 4, "probe_per_class": 2, "window": 2, "max_inner": 2}
    if schedule == "fixed":
        settings.update(schedule="fixed", outer_loop=2, inner_loop=1)
    made = DistillConfig(
        objective="cafe",
        codec="haba",
        ipc=2,
        iterations=0,
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
    engine = [read for read in on_meta if "loss" in read]
    probes = [read for read in on_meta if "loss" not in read]
    assert len(engine) == 2 and "cafe" in engine[0] and set(records[-1]) == set(engine[-1])
    assert all(read == ["accuracy"] for read in probes)
    # dynamic, every probe reading 0 here: step 1 (one outer accuracy, no window yet: two
    # inner epochs, each read) and step 2 (two equal outer accuracies: settled, a new
    # network next, no inner epoch); fixed: no read besides the engine's
    assert len(probes) == (0 if schedule == "fixed" else 1 + 2 + 1)


@pytest.mark.slow
def test_two_ranks_take_the_step_of_one_process_and_agree_on_the_schedule(tmp_path):
    from helpers import assert_same_step, needs_torchrun, one_process_and_two_ranks
    from helpers import run_habactl as run

    if needs_torchrun.args[0]:
        pytest.skip("torchrun not installed")
    args = ("compress", "digits", "--objective", "cafe", "--ipc", "1", "--threads", "1",
            "-q")  # fmt: skip
    assert_same_step(*one_process_and_two_ranks(tmp_path, *args, "--iterations", "1"))
    # Several networks' lives (probe reads, inner loops) on both ranks: one archive.
    longer = run(*args, "--iterations", "4", "-o", "three.haba", cwd=tmp_path, world=2)
    assert longer.returncode == 0, longer.stderr
    assert (tmp_path / "three.haba").is_file()
