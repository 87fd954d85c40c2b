"""Trajectory matching (`mtt`) through the engine, at tiny settings (3 mnist-5k classes)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from habactl.distill import DistillConfig, Distiller
from habactl.distill import checkpoint as ckpt
from habactl.distill.errors import DistillError
from habactl.errors import HabaError
from habactl.evaluation.run import archive_lr
from habactl.experts import ExpertSettings, train_experts
from habactl.format import open_archive
from habactl.training.dataset import HabaDataset
from helpers import tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mtt") / "buffer"
    train_experts(
        tiny_mnist(), folder, ExpertSettings(experts=2, epochs=3, width=0.125, batch_size=32)
    )
    return folder


def config(
    buffer, codec: str = "raw", ipc: int = 1, iterations: int = 0, **settings
) -> DistillConfig:
    return DistillConfig(
        objective="mtt",
        codec=codec,
        ipc=ipc,
        iterations=iterations,
        lr_bases=100.0,
        momentum=0.5,
        contrastive=False,
        checkpoint_every=1000,
        contrastive_settings={"batch": 4},
        objective_settings={"experts": str(buffer), "syn_steps": 3, **settings},
    )


@pytest.mark.parametrize("codec, ipc", [("raw", 1), ("idc", 1), ("haba", 2), ("haba+idc", 1)])
def test_the_loss_goes_down(buffer, codec, ipc):
    distiller = Distiller(tiny_mnist(), config(buffer, codec, ipc))
    fixed = distiller.generators["objective"].get_state()
    losses = []
    for _ in range(4):  # the same expert, start epoch, batches and augmentation each step
        distiller.generators["objective"].set_state(fixed)
        losses.append(distiller.step()["loss"])
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize(
    "codec, ipc, variants",
    [("raw", 1, "one-per-step"), ("haba", 2, "one-per-step"), ("haba", 2, "all")],
)
def test_recomputed_unroll_gives_the_gradients_of_the_full_graph(buffer, codec, ipc, variants):
    grads = {}
    for unroll in ("full", "recompute"):
        distiller = Distiller(
            tiny_mnist(), config(buffer, codec, ipc, unroll=unroll, batch_syn=4, variants=variants)
        )
        loss, _ = distiller.objective.loss(distiller.synthetic, torch.Generator().manual_seed(7))
        params = [
            distiller.synthetic.bases,
            *distiller.synthetic.hallucinator_parameters(),
            distiller.objective.syn_lr,
        ]
        grads[unroll] = (float(loss.detach()), torch.autograd.grad(loss, params))
    assert grads["full"][0] == pytest.approx(grads["recompute"][0], rel=1e-5)
    for a, b in zip(grads["full"][1], grads["recompute"][1]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6 * float(a.abs().max()) + 1e-9)


def test_learned_lr_goes_to_the_archive_and_is_used(buffer, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = tiny_mnist()
    base = config(buffer, "haba", 2, iterations=3, lr_lr=1e-6)
    base = DistillConfig(**{**base.__dict__, "contrastive": True})
    distiller = Distiller(source, base)
    whole = distiller.run(tmp_path / "whole.haba")
    learned = float(distiller.objective.syn_lr.detach())
    assert learned != pytest.approx(0.01)  # it was learned
    with open_archive(whole.path) as archive:
        training = archive.manifest["training"]
        hyper = archive.manifest["provenance"]["hyperparameters"]["objective"]
    assert training["learned_lr"] == pytest.approx(learned) and training["recommended"][
        "lr"
    ] == pytest.approx(learned)
    assert (
        hyper["max_start_epoch"] == 2
        and hyper["lr_init"] == 0.01
        and hyper["buffer"]["experts"] == 2
    )
    dataset = HabaDataset(whole.path)
    assert dataset.recommended_lr == pytest.approx(learned)
    assert archive_lr(dataset, None) == (pytest.approx(learned), "learned")

    # Resume after iteration 2 (the learned lr and its momentum included) = uninterrupted.
    first = Distiller(source, base)
    for _ in range(2):
        first.step()
    ckpt.save(tmp_path / "resumed.haba.ckpt", first._state())
    Distiller(source, base).run(tmp_path / "resumed.haba", resume=True)
    assert (tmp_path / "resumed.haba").read_bytes() == whole.path.read_bytes()


def test_mtt_without_a_buffer_is_refused():
    with pytest.raises(DistillError, match="needs an experts buffer: --experts DIR"):
        Distiller(tiny_mnist(), DistillConfig(objective="mtt", codec="raw", iterations=0))


def test_a_buffer_of_other_data_or_network_or_a_corrupt_one_is_refused(buffer, tmp_path):
    other = tiny_mnist(classes=3, train_per_class=21)  # other content, other fingerprint
    with pytest.raises(HabaError, match="was trained on 'mnist-5k-3'.*not on this data set"):
        Distiller(other, config(buffer))

    changed = tmp_path / "changed"
    shutil.copytree(buffer, changed)
    index = json.loads((changed / "index.json").read_text())
    index["parameters"]["layout"][0][1] = [99]
    (changed / "index.json").write_text(json.dumps(index))
    with pytest.raises(HabaError, match="differ from the student network"):
        Distiller(tiny_mnist(), config(changed))

    corrupt = tmp_path / "corrupt"
    shutil.copytree(buffer, corrupt)
    for name in ("expert-0000.safetensors", "expert-0001.safetensors"):
        data = bytearray((corrupt / name).read_bytes())
        data[-9] ^= 0x40
        (corrupt / name).write_bytes(bytes(data))
    distiller = Distiller(tiny_mnist(), config(corrupt))
    with pytest.raises(HabaError, match="is corrupt .*rerun habactl experts"):
        distiller.step()

    with pytest.raises(HabaError, match="goes past the buffer's 3 epochs"):
        Distiller(tiny_mnist(), config(buffer, max_start_epoch=3))


def test_compress_command_with_mtt(tmp_path, buffer):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401  (registers the command)
    import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
    from habactl.cli.app import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["compress", "digits", "-o", str(tmp_path / "x.haba"), "--objective", "mtt"]
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "--experts DIR" in lines[0]
    result = runner.invoke(
        app, ["compress", "digits", "-o", str(tmp_path / "x.haba"), "--experts", str(buffer)]
    )
    assert result.exit_code == 1 and "mtt only" in result.stderr
    # A buffer of 3 mnist-5k classes is not one of digits: refused by fingerprint, one line.
    result = runner.invoke(
        app,
        [
            "compress",
            "digits",
            "-o",
            str(tmp_path / "x.haba"),
            "--objective",
            "mtt",
            "--experts",
            str(buffer),
            "--codec",
            "raw",
        ],
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "not on this data set 'digits'" in lines[0]
    assert not (tmp_path / "x.haba").exists()


def test_the_learned_lr_never_goes_below_its_floor(buffer):
    distiller = Distiller(tiny_mnist(), config(buffer, lr_min=1e-4))
    with torch.no_grad():
        distiller.objective.syn_lr.fill_(-0.5)
    distiller.objective.after_step(distiller.synthetic, torch.Generator())
    assert distiller.objective.learned_lr() == pytest.approx(1e-4)
    with pytest.raises(DistillError, match="lr_min <= lr_init"):
        Distiller(tiny_mnist(), config(buffer, lr_min=0.5))
