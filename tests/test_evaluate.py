"""`habactl evaluate` and habactl.evaluation: protocol, training, scoring, test images, CLI.

Tiny settings throughout (8×8 digits, a few epochs, one model): these check behaviour a
user would notice, not accuracy; accuracy is measured by the benchmarks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.distill.archive import write_haba
from habactl.errors import HabaError
from habactl.evaluation import FAST, STANDARD, Protocol, accuracy, summarize, train_net
from habactl.evaluation.run import (
    archive_lr,
    budget_per_class,
    evaluate_archive,
    parse_names,
    prepare_test_images,
    random_training_set,
)
from habactl.format.normalization import Normalizer, mean_std
from habactl.nets import build_net
from habactl.training.dataset import HabaDataset
from helpers import hallucinate_stage, one_error_line

runner = CliRunner()
TINY = Protocol(epochs=2, models=1, batch_size=64)


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    from habactl.data import load_source

    return load_source("digits")


def zca_matrix(images: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    flat = images.reshape(images.shape[0], -1).double()
    values, vectors = torch.linalg.eigh(flat.T @ flat / flat.shape[0])
    return (vectors @ torch.diag((values.clamp_min(0) + eps).rsqrt()) @ vectors.T).float()


@pytest.fixture(scope="module")
def write(tmp_path_factory, digits):
    """Factory: a digits archive of real images per class (raw pipeline), in any normalisation."""
    from habactl.codecs import Pipeline

    folder = tmp_path_factory.mktemp("evaluate")

    def build(
        name: str,
        *,
        per_class: int = 2,
        learned_lr: float | None = None,
        normalization: dict | None = None,
        zca: torch.Tensor | None = None,
        source=None,
        stages: list[dict] | None = None,
    ) -> Path:
        from habactl.distill.baselines import random_per_class

        normalization = normalization or mean_std(digits.mean(), digits.std())
        picked = random_per_class(digits.train.labels, per_class, digits.num_classes, 0)
        bases = Normalizer(normalization, zca)(digits.train.images[picked])
        pipeline = Pipeline.from_manifest(stages or [], tuple(bases.shape[1:]))
        return write_haba(
            folder / name,
            source=source or digits,
            bases=bases,
            labels=digits.train.labels[picked],
            pipeline=pipeline,
            normalization=normalization,
            objective="random",
            hyperparameters={"per_class": per_class},
            iterations=0,
            seed=0,
            ipc=per_class,
            learned_lr=learned_lr,
            zca=zca,
            overwrite=True,
        )

    return build


# -- protocol ----------------------------------------------------------------------------


def test_presets_follow_the_standard_protocol():
    assert (STANDARD.epochs, STANDARD.models, STANDARD.batch_size) == (1000, 5, 256)
    assert (STANDARD.lr, STANDARD.momentum, STANDARD.weight_decay) == (0.01, 0.9, 0.0005)
    assert STANDARD.augmentation == "dsa" and STANDARD.decay_epoch == 500
    assert (FAST.epochs, FAST.models) == (150, 2)
    assert STANDARD.full_data().epochs == 20 and FAST.full_data().epochs == 3
    assert Protocol(epochs=3).full_data().epochs == 1
    with pytest.raises(HabaError):
        Protocol(epochs=0)
    with pytest.raises(HabaError):
        Protocol(augmentation="mixup")


def test_lr_drops_tenfold_at_half_in_the_optimiser():
    protocol = Protocol(epochs=10, batch_size=4, augmentation="none")
    seen: dict[int, float] = {}
    torch.manual_seed(0)
    net = build_net("mlp", 1, 8, 8, 3)
    train_net(
        net,
        torch.randn(6, 1, 8, 8),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        protocol,
        lr=0.05,
        on_epoch=lambda epoch, opt: seen.__setitem__(epoch, opt.param_groups[0]["lr"]),
    )
    assert sorted(seen) == list(range(10))
    assert seen[0] == seen[4] == pytest.approx(0.05)
    assert seen[5] == seen[9] == pytest.approx(0.005)
    assert STANDARD.lr_at(499) == pytest.approx(0.01) and STANDARD.lr_at(500) == pytest.approx(
        0.001
    )


def test_training_is_reproducible_and_takes_soft_labels():
    images = torch.randn(12, 1, 8, 8)
    hard = torch.arange(3).repeat(4)
    protocol = Protocol(epochs=3, batch_size=5)

    def trained(labels, seed=1):
        from habactl.training.augment import SiameseAugment

        torch.manual_seed(seed)
        net = build_net("convnet", 1, 8, 8, 3)
        train_net(
            net,
            images,
            labels,
            protocol,
            augment=SiameseAugment(flip=False),
            generator=torch.Generator().manual_seed(seed),
        )
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    assert torch.equal(trained(hard), trained(hard))
    assert not torch.equal(trained(hard), trained(hard, seed=2))
    soft = torch.nn.functional.one_hot(hard, 3).float()
    assert torch.allclose(trained(soft), trained(hard), atol=1e-5)


def test_accuracy_and_summary():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        net[1].bias.zero_()
    images = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0]]).view(3, 1, 2, 2)
    assert accuracy(net, images, torch.tensor([0, 1, 1]), batch_size=2) == pytest.approx(2 / 3)
    assert summarize([50.0, 60.0]) == (55.0, 5.0)  # population std, as the papers report


def test_names_are_split_checked_and_deduplicated():
    assert parse_names(["convnet,mlp", "mlp"], ("convnet", "mlp"), "architecture") == [
        "convnet",
        "mlp",
    ]
    with pytest.raises(HabaError, match="unknown architecture 'lenet'"):
        parse_names(["lenet"], ("convnet",), "architecture")


# -- the archive side --------------------------------------------------------------------


def test_learned_lr_is_used_unless_overridden(write):
    plain = HabaDataset(write("plain.haba"))
    learned = HabaDataset(write("learned.haba", learned_lr=0.05))
    assert archive_lr(plain, None) == (0.01, "archive")
    assert archive_lr(learned, None) == (0.05, "learned")
    assert archive_lr(learned, 0.2) == (0.2, "option")
    torch.set_num_threads(2)
    result = evaluate_archive(learned.path, protocol=TINY, archs=["mlp"], device="cpu", threads=1)
    assert result.run.lr == 0.05 and result.run.lr_source == "learned"
    assert result.run.threads == 1 and torch.get_num_threads() == 2
    torch.set_num_threads(1)


def test_test_images_get_the_archives_mean_std(write, digits):
    path = write("odd-norm.haba", normalization=mean_std([0.3], [0.2]))
    images, labels = prepare_test_images(HabaDataset(path), digits)
    assert torch.allclose(images, (digits.test.images - 0.3) / 0.2)
    assert torch.equal(labels, digits.test.labels)


def test_test_images_get_the_archives_zca(write, digits):
    normalization = {**mean_std(digits.mean(), digits.std()), "kind": "zca", "eps": 0.1}
    standardised = Normalizer(mean_std(digits.mean(), digits.std()))(digits.train.images)
    zca = zca_matrix(standardised)
    dataset = HabaDataset(write("zca.haba", normalization=normalization, zca=zca))
    images, _ = prepare_test_images(dataset, digits)
    mean_std_only = Normalizer(mean_std(digits.mean(), digits.std()))(digits.test.images)
    expected = (mean_std_only.reshape(len(images), -1) @ zca.T).reshape(images.shape)
    assert torch.allclose(images, expected, atol=1e-5)
    assert not torch.allclose(images, mean_std_only, atol=1e-2)


def test_a_zca_archive_without_its_matrix_does_not_pass(digits):
    manifest = {"normalization": {"kind": "zca", "mean": [0.5], "std": [0.25], "eps": 0.1}}
    broken = SimpleNamespace(
        image_shape=(1, 8, 8),
        classes=digits.classes,
        manifest=manifest,
        test_transform=lambda: Normalizer(manifest["normalization"], None),
    )
    with pytest.raises(HabaError, match="zca"):
        prepare_test_images(broken, digits)


def test_random_baseline_spends_the_true_budget(write, digits):
    raw = HabaDataset(write("raw.haba", per_class=2))
    assert budget_per_class(raw.info) == 2
    # 2 bases per class plus 3 hallucinators: the hallucinators' values buy more real images.
    haba = HabaDataset(write("haba.haba", per_class=2, stages=[hallucinate_stage(3)]))
    stored = haba.manifest["tensors"]
    values = sum(torch.Size(e["shape"]).numel() for n, e in stored.items() if n != "labels")
    assert budget_per_class(haba.info) == max(1, values // 64 // 10)
    arm = random_training_set(haba, digits, TINY)
    assert arm.images.shape[0] == 10 * budget_per_class(haba.info)
    assert torch.bincount(arm.labels, minlength=10).unique().tolist() == [
        budget_per_class(haba.info)
    ]


# -- the command -------------------------------------------------------------------------


def test_json_output_with_both_baselines(write):
    path = write("cli.haba")
    result = run(
        "evaluate",
        path,
        "--arch",
        "mlp",
        "--epochs",
        "2",
        "--models",
        "2",
        "--baseline",
        "full,random",
        "--full-epochs",
        "1",
        "--json",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout holds nothing but the JSON
    assert set(report) >= {"archive", "data", "protocol", "results", "baselines", "accuracy_unit"}
    assert report["data"]["name"] == "digits" and report["data"]["matches_archive"]
    assert report["archive"]["training_images"] == 20
    assert report["protocol"]["epochs"] == 2 and report["protocol"]["lr"] == 0.01
    mlp = report["results"]["mlp"]
    assert len(mlp["accuracies"]) == 2 and all(0 <= a <= 100 for a in mlp["accuracies"])
    assert mlp["mean"] == pytest.approx(sum(mlp["accuracies"]) / 2, abs=1e-3)
    full, random = report["baselines"]["full"], report["baselines"]["random"]
    assert full["epochs"] == 1 and full["training_images"] == 1438
    assert random["training_images"] == 20 and random["per_class"] == 2
    assert set(full["results"]) == set(random["results"]) == {"mlp"}


def test_convnet_table_and_reproducibility(write):
    path = write("table.haba")
    args = ("evaluate", path, "--arch", "convnet", "--epochs", "2", "--models", "1")
    first, second = (run(*args, "--seed", "3", "--json", "-q") for _ in range(2))
    assert first.exit_code == second.exit_code == 0, first.output
    accuracies = [json.loads(r.stdout)["results"]["convnet"]["accuracies"] for r in (first, second)]
    assert accuracies[0] == accuracies[1]
    human = run("evaluate", path, "--epochs", "1", "--models", "1", "-q")
    assert human.exit_code == 0, human.output
    assert "convnet" in human.stdout and "±" in human.stdout and "accuracy" in human.stdout


def test_other_data_warns_and_unknown_provenance_fails(write, digits):
    stranger = SimpleNamespace(
        name="somewhere-else",
        fingerprint="sha256:" + "cd" * 32,
        classes=digits.classes,
        channels=1,
        height=8,
        width=8,
    )
    path = write("stranger.haba", source=stranger)
    line = one_error_line(run("evaluate", path, "--epochs", "1", "--models", "1"))
    assert "somewhere-else" in line and "--data" in line
    result = run(
        "evaluate",
        path,
        "--data",
        "digits",
        "--arch",
        "mlp",
        "--epochs",
        "1",
        "--models",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "fingerprint" in result.stderr
    report = json.loads(result.stdout)
    assert not report["data"]["matches_archive"] and report["warnings"]


def test_networks_trained_side_by_side_give_the_same_numbers(write):
    path = write("parallel.haba")
    protocol = Protocol(epochs=3, models=2, batch_size=64)
    one_by_one = evaluate_archive(
        path,
        protocol=protocol,
        archs=["mlp"],
        baselines=["random"],
        device="cpu",
        threads=1,
        jobs=1,
    ).to_json()
    events: list[tuple] = []
    side_by_side = evaluate_archive(
        path,
        protocol=protocol,
        archs=["mlp"],
        baselines=["random"],
        device="cpu",
        threads=1,
        jobs=2,
        progress=lambda *event: events.append(event),
    ).to_json()
    assert side_by_side["protocol"]["jobs"] == 2 and one_by_one["protocol"]["jobs"] == 1
    for report in (one_by_one, side_by_side):
        assert len(report["results"]["mlp"]["accuracies"]) == 2
    assert side_by_side["results"] == {
        "mlp": {
            **one_by_one["results"]["mlp"],
            "seconds": side_by_side["results"]["mlp"]["seconds"],
            "seconds_per_model": side_by_side["results"]["mlp"]["seconds_per_model"],
        }
    }
    assert (
        side_by_side["baselines"]["random"]["results"]["mlp"]["accuracies"]
        == one_by_one["baselines"]["random"]["results"]["mlp"]["accuracies"]
    )
    # Progress: every network announced at epoch 0, finished at epoch 3, never going back.
    networks = {(arm, arch, model) for arm, arch, model, *_ in events}
    assert networks == {(arm, "mlp", m) for arm in ("archive", "random") for m in (0, 1)}
    for network in networks:
        epochs = [
            epoch for arm, arch, model, _, epoch, _ in events if (arm, arch, model) == network
        ]
        assert epochs[0] == 0 and epochs[-1] == 3 and epochs == sorted(epochs)


def test_jobs_must_be_positive(write):
    path = write("jobs.haba")
    result = run("evaluate", path, "--jobs", "0")
    assert result.exit_code == 2
    with pytest.raises(HabaError, match="jobs"):
        evaluate_archive(path, protocol=TINY, device="cpu", jobs=0)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["missing.haba"], "no such archive"),
        (["{archive}", "--arch", "lenet"], "unknown architecture"),
        (["{archive}", "--baseline", "everything"], "unknown baseline"),
        (["{archive}", "--data", "no/such/data.npz"], "no/such/data.npz"),
        (["{archive}", "--data", "mnist-5k"], "1×28×28"),
        (["{archive}", "--lr", "0"], "lr"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(write, tmp_path, args, expected):
    archive = write("bad-input.haba")
    args = [a.format(archive=archive) for a in args]
    if args[0] == "missing.haba":
        args[0] = str(tmp_path / "missing.haba")
    result = run("evaluate", *args, "--epochs", "1", "--models", "1")
    assert result.exit_code == 1, result.output
    assert expected in one_error_line(result)


@pytest.mark.parametrize("soft", [False, True])
def test_chunked_backward_gives_the_whole_batch_gradient(soft):
    """Training steps go through the net in cache-sized chunks on a CPU; the gradient must
    be the one of the whole batch (hard and soft labels), and batch norm is never chunked."""
    from habactl.evaluation.train import backward_in_chunks, chunk_size

    torch.manual_seed(0)
    net = build_net("convnet", 1, 8, 8, 3)
    images = torch.randn(70, 1, 8, 8)
    labels = torch.randint(0, 3, (70,))
    targets = torch.softmax(torch.randn(70, 3), dim=1) if soft else labels

    def gradient(chunk):
        net.zero_grad(set_to_none=True)
        backward_in_chunks(net, images, targets, chunk)
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    whole, chunked = gradient(None), gradient(16)
    assert torch.allclose(whole, chunked, rtol=1e-4, atol=1e-6)
    assert whole.abs().sum() > 0
    assert chunk_size(net, torch.device("cpu")) == 16
    assert chunk_size(build_net("convnet", 1, 8, 8, 3, norm="batch"), torch.device("cpu")) is None


def _workers_of(parent: int) -> list[int]:
    """The pids of `parent`'s evaluation workers (spawned children), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        if int(ppid) == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of `pid` so far (0 once it is gone)."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return False
    state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_killed_evaluate_leaves_no_worker_training(write, tmp_path):
    # SIGKILL runs no clean-up in the parent: the workers must notice its death themselves.
    import signal
    import subprocess
    import sys
    import time

    from helpers import environment

    path = write("killed.haba")
    command = [sys.executable, "-m", "habactl", "evaluate", str(path), "--models", "2",
               "--jobs", "2", "--threads", "1", "--epochs", "100000", "-q"]  # fmt: skip
    parent = subprocess.Popen(command, env=environment(), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.5)
            workers = _workers_of(parent.pid)
        assert len(workers) == 2, "the two workers never started"
        # training, not still starting (a worker that has not read its task yet stops
        # when the parent's pipe closes): past the seconds of CPU that importing takes
        while min(map(_cpu_seconds, workers)) < 10 and time.monotonic() < deadline:
            time.sleep(0.5)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_running(pid) for pid in workers), "workers outlived a killed evaluate"
    finally:
        if parent.poll() is None:
            parent.kill()
