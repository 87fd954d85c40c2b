"""Dataset distillation by unrolled training (`dd`) through the engine, at tiny settings
(3 mnist-5k classes, a narrow network, a few inner steps), with and without learned labels."""

from __future__ import annotations

import pytest
import torch

from habactl.distill import DistillConfig, Distiller
from habactl.distill import checkpoint as ckpt
from habactl.distill.errors import DistillError
from habactl.format import open_archive, storage_account
from habactl.training.dataset import HabaDataset
from helpers import one_error_line, tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"inner_steps": 3, "real_per_class": 4, "net_width": 0.125}


def config(codec: str = "raw", ipc: int = 1, iterations: int = 0, **settings) -> DistillConfig:
    engine = {k: settings.pop(k) for k in ("quantize", "frequency", "contrastive") if k in settings}
    return DistillConfig(
        **{
            "objective": "dd",
            "codec": codec,
            "ipc": ipc,
            "iterations": iterations,
            "lr_bases": 100.0,
            "momentum": 0.5,
            "augment": "none",
            "contrastive": False,
            "checkpoint_every": 1000,
            "contrastive_settings": {"batch": 4},
            "objective_settings": {**SETTINGS, **settings},
            **engine,
        }
    )


@pytest.mark.parametrize(
    "codec, ipc, labels",
    [("raw", 1, False), ("idc", 1, False), ("haba", 2, False), ("haba+idc", 1, True)],
)
def test_the_loss_goes_down(codec, ipc, labels):
    # The same network, real batch and steps every iteration: what remains is the
    # optimisation of the stored tensors (and lrs, labels), which must lower the loss.
    distiller = Distiller(tiny_mnist(), config(codec, ipc, learn_labels=labels))
    fixed = distiller.generators["objective"].get_state()
    losses = []
    for _ in range(4):
        distiller.generators["objective"].set_state(fixed)
        losses.append(distiller.step()["loss"])
    assert losses[-1] < 0.97 * losses[0], losses


@pytest.mark.parametrize(
    "codec, ipc, labels, variants",
    [
        ("raw", 1, False, "one-per-step"),
        ("haba", 2, True, "one-per-step"),
        ("haba", 2, True, "all"),
    ],
)
def test_recomputed_unroll_gives_the_gradients_of_the_full_graph(codec, ipc, labels, variants):
    grads = {}
    for unroll in ("full", "recompute"):
        distiller = Distiller(
            tiny_mnist(),
            config(codec, ipc, unroll=unroll, batch_syn=4, variants=variants, learn_labels=labels),
        )
        objective = distiller.objective
        loss, _ = objective.loss(distiller.synthetic, torch.Generator().manual_seed(7))
        params = [
            distiller.synthetic.bases,
            *distiller.synthetic.hallucinator_parameters(),
            objective.raw_lrs,
            *([objective.label_logits] if labels else []),
        ]
        grads[unroll] = (float(loss.detach()), torch.autograd.grad(loss, params))
    assert grads["full"][0] == pytest.approx(grads["recompute"][0], rel=1e-5)
    for a, b in zip(grads["full"][1], grads["recompute"][1]):
        assert float(a.abs().max()) > 0  # every learned tensor gets a gradient
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6 * float(a.abs().max()) + 1e-9)


@pytest.mark.parametrize(
    "codec, ipc, labels, contrastive", [("haba", 2, False, True), ("idc", 1, True, False)]
)
def test_archive_round_trips_and_resume_equals_an_uninterrupted_run(
    tmp_path, codec, ipc, labels, contrastive, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = tiny_mnist()
    base = config(codec, ipc, iterations=4, learn_labels=labels, contrastive=contrastive)
    distiller = Distiller(source, base)
    whole = distiller.run(tmp_path / "whole.haba")
    learned = distiller.objective.lrs().detach()
    assert not torch.allclose(learned, torch.full_like(learned, 0.02))  # the lrs were learned

    first = Distiller(source, base)  # stop after iteration 3, then resume
    for _ in range(3):
        first.step()
    ckpt.save(tmp_path / "resumed.haba.ckpt", first._state())
    resumed = Distiller(source, base).run(tmp_path / "resumed.haba", resume=True)
    assert resumed.resumed_from == 3
    assert (tmp_path / "resumed.haba").read_bytes() == whole.path.read_bytes()

    with open_archive(whole.path) as archive:
        manifest = archive.manifest
        stored = archive.tensors()
    assert manifest["provenance"]["objective"] == "dd"
    assert manifest["training"]["learned_lr"] == pytest.approx(float(learned.mean()))
    assert manifest["provenance"]["hyperparameters"]["objective"]["learn_labels"] is labels
    assert all(bool(torch.isfinite(t.float()).all()) for t in stored.values())
    dataset = HabaDataset(whole.path)
    assert dataset.recommended_lr == pytest.approx(float(learned.mean()))
    images, item_labels = dataset.fetch(torch.arange(len(dataset)))
    assert images.shape[1:] == (1, 28, 28) and bool(torch.isfinite(images).all())
    if labels:
        assert manifest["labels"]["kind"] == "soft"
        assert item_labels.shape == (len(dataset), 3)
        assert torch.allclose(stored["labels"].sum(1), torch.ones(len(stored["labels"])))
        # learned: no longer the initial 0.9 / 0.05 / 0.05 of every basis
        assert float((stored["labels"].max(1).values - 0.9).abs().max()) > 1e-4
    else:
        assert manifest["labels"]["kind"] == "hard"


def test_learned_labels_are_paid_for_out_of_the_budget():
    source = tiny_mnist()
    hard = Distiller(source, config("idc", 1)).plan
    soft = Distiller(source, config("idc", 1, learn_labels=True)).plan
    # IDC at IPC 1: 14x14 bases, 784 bytes; a learned label of 3 classes costs 12 more
    assert (hard.label_bytes, soft.label_bytes) == (0, 12)
    assert soft.bases < hard.bases and soft.charged_bytes <= soft.budget_bytes
    assert soft.describe()["label_values"] == soft.bases * 3
    assert "label_values" not in hard.describe()
    # raw at IPC 1 is one image per class: nothing is left for a label
    with pytest.raises(DistillError, match=r"3 x 784 \+ 3 label values.*learned labels cost"):
        Distiller(source, config("raw", 1, learn_labels=True))


def test_the_archive_account_counts_the_learned_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    distiller = Distiller(tiny_mnist(), config("idc", 1, iterations=1, learn_labels=True))
    result = distiller.run(tmp_path / "a.haba")
    with open_archive(result.path) as archive:
        account = storage_account(archive.manifest)
        per_class = archive.manifest["bases"]["per_class"]
    assert account.parts["labels"].counted and account.parts["labels"].bytes == 12 * sum(per_class)
    assert account.counted_bytes == distiller.plan.stored_bytes <= account.budget_bytes
    assert per_class == distiller.plan.per_class


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"inner_steps": 0}, "inner_steps must be >= 1"),
        ({"inner_steps": 2.5}, "inner_steps must be an integer"),
        ({"learn_labels": "yes"}, "learn_labels must be true or false"),
        ({"unroll": "lazy"}, "unroll must be one of recompute, full"),
        ({"lr_init": 0.0}, "lr_init must be positive"),
        ({"label_init": 1.0}, "label_init must lie strictly between 0 and 1"),
        ({"real_per_class": 99}, "--real-per-class 99 asks for more real images"),
        ({"steps": 3}, "unknown setting"),
    ],
)
def test_bad_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(DistillError, match=message) as error:
        Distiller(tiny_mnist(), config(**settings))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("extra", [{"quantize": "uint8"}, {"frequency": 60}])
def test_quantized_and_frequency_bases_run(extra, tmp_path):
    distiller = Distiller(tiny_mnist(), config("idc", 1, iterations=2, **extra))
    result = distiller.run(tmp_path / "q.haba")
    assert result.final_loss is not None
    with open_archive(result.path) as archive:
        assert [e["name"] for e in archive.manifest["pipeline"]][0] in ("quantize", "frequency")


@pytest.mark.slow
def test_compress_command_with_dd_and_a_config_file(tmp_path):
    from typer.testing import CliRunner

    import habactl.cli.compress  # noqa: F401  (registers the command)
    import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
    from habactl.cli.app import app

    recipe = tmp_path / "dd.toml"
    recipe.write_text(
        'objective = "dd"\ncodec = "idc"\niterations = 1\nthreads = 1\n\n[settings]\n'
        "inner_steps = 2\nreal_per_class = 4\nnet_width = 0.125\nlearn_labels = true\n"
    )
    out = tmp_path / "dd.haba"
    runner = CliRunner()
    result = runner.invoke(
        app, ["compress", "digits", "-o", str(out), "--config", str(recipe), "-q"]
    )
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        assert archive.manifest["labels"]["kind"] == "soft"
        assert archive.manifest["provenance"]["hyperparameters"]["objective"]["inner_steps"] == 2
    recipe.write_text(recipe.read_text().replace("inner_steps = 2", "inner_steps = -1"))
    result = runner.invoke(
        app, ["compress", "digits", "-o", str(tmp_path / "x.haba"), "--config", str(recipe)]
    )
    assert result.exit_code == 1 and "inner_steps must be >= 1" in one_error_line(result)
