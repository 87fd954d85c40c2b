"""`compress --objective mtt` and `--objective random` under `torchrun --nproc-per-node 2`
(gloo on this CPU). mtt on N ranks matches N trajectories per iteration (each rank its
own) and steps along their mean gradient, so its archive is not the one-process archive:
the tests check what it means (the logged loss is the mean of the ranks' trajectory
losses, before and after a step along the mean) and that a killed run resumes to the
very archive of an uninterrupted one. random has nothing to split: the same archive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import needs_torchrun, run_habactl

pytestmark = [pytest.mark.slow, needs_torchrun, pytest.mark.usefixtures("one_thread")]

ITERATIONS = 6
# Both ranks SIGKILL themselves after iteration 5; rank 0's checkpoint of iteration 4 stays.
KILL_AFTER = 5


def mtt_args(buffer: Path) -> tuple:
    return ("compress", "digits", "--objective", "mtt", "--experts", buffer, "--ipc", "1",
            "--syn-steps", "3", "--iterations", ITERATIONS, "--checkpoint-every", "2",
            "--threads", "1")  # fmt: skip


def manifest(path: Path) -> dict:
    from habactl.format import open_archive

    archive = open_archive(path)
    try:
        return archive.manifest
    finally:
        archive.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny experts buffer of digits, made the way a user makes one."""
    folder = tmp_path_factory.mktemp("mtt-dist")
    done = run_habactl("experts", "digits", "-o", "buf", "--experts", "2", "--epochs", "3",
                       "--width", "0.125", "--batch-size", "64", "--threads", "1", "-q",
                       cwd=folder, world=None)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture(scope="module")
def uninterrupted(folder: Path) -> Path:
    done = run_habactl(*mtt_args(folder / "buf"), "-q", "-o", "two.haba", "--log-file", "two.jsonl",
                       cwd=folder, world=2)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder / "two.haba"


def test_mtt_on_two_ranks_writes_one_archive_recording_the_world_size(uninterrupted):
    folder = uninterrupted.parent
    hyperparameters = manifest(uninterrupted)["provenance"]["hyperparameters"]
    assert hyperparameters["world_size"] == 2
    assert hyperparameters["objective"]["name"] == "mtt"
    assert manifest(uninterrupted)["training"]["learned_lr"] > 0
    log = [json.loads(line) for line in (folder / "two.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if r["event"] == "iteration"] == list(
        range(1, ITERATIONS + 1)
    )  # one log, rank 0's
    assert not (folder / "two.haba.ckpt").exists()


def _rank_losses(distiller, loss, iteration: int, world: int = 2) -> list:
    """The mtt `loss` each rank of `world` computes at `iteration` (0-based), in this process."""
    from habactl.distill.engine import stream

    return [
        loss(
            distiller.synthetic,
            stream(distiller.config.seed, f"objective/rank-{rank}/iteration-{iteration}"),
        )[0]
        for rank in range(world)
    ]


def test_the_loss_of_two_ranks_is_the_mean_of_their_trajectories_and_they_step_along_it(
    uninterrupted,
):
    from habactl.data import load_source
    from habactl.distill import DistillConfig, Distiller

    folder = uninterrupted.parent
    config = DistillConfig(  # what the command line above asks for
        objective="mtt",
        lr_bases=100.0,
        momentum=0.5,
        iterations=ITERATIONS,
        checkpoint_every=2,
        objective_settings={"experts": str(folder / "buf"), "syn_steps": 3},
    )
    distiller = Distiller(load_source("digits"), config)
    recorded = manifest(uninterrupted)["provenance"]["hyperparameters"]
    assert {k: v for k, v in recorded.items() if k != "world_size"} == json.loads(
        json.dumps(distiller.hyperparameters)
    )  # the same run, but for the world size
    log = [json.loads(line) for line in (folder / "two.jsonl").read_text().splitlines()]
    logged = [r["mtt"] for r in log if r["event"] == "iteration"]

    loss = distiller.objective.loss
    first = [float(value.detach()) for value in _rank_losses(distiller, loss, 0)]
    assert logged[0] == pytest.approx(sum(first) / 2, rel=1e-5)
    assert first[0] != pytest.approx(first[1], rel=1e-3)  # two trajectories, not one twice

    # One step along the mean of the two ranks' gradients, as one process takes it ...
    def mean_of_ranks(synthetic, generator):
        return sum(_rank_losses(distiller, loss, 0)) / 2, {}

    distiller.objective.loss = mean_of_ranks
    distiller.step()
    # ... is the step the two ranks took: the next iteration's losses agree as well.
    second = [float(value.detach()) for value in _rank_losses(distiller, loss, 1)]
    # Tight: the step bound (max_step) clips most of a step's size, so a sum of the two
    # gradients instead of their mean moves this loss by ~1e-5 only (measured).
    assert logged[1] == pytest.approx(sum(second) / 2, rel=2e-6)
    assert logged[1] != pytest.approx(logged[0], rel=1e-4)


def test_a_killed_mtt_run_resumes_on_two_ranks_to_the_uninterrupted_archive(uninterrupted):
    folder = uninterrupted.parent
    args = (*mtt_args(folder / "buf"), "-q", "-o", "three.haba")
    stopped = run_habactl(
        *args, cwd=folder, world=2, env={"HABACTL_FAULT_KILL_AFTER": str(KILL_AFTER)}
    )
    assert stopped.returncode != 0
    assert (folder / "three.haba.ckpt").is_file() and not (folder / "three.haba").exists()

    resumed = run_habactl(*args, "--resume", cwd=folder, world=2)
    assert resumed.returncode == 0, resumed.stderr
    assert (
        manifest(folder / "three.haba")["content_digest"]
        == (manifest(uninterrupted)["content_digest"])
    )
    assert not (folder / "three.haba.ckpt").exists()


def test_random_on_two_ranks_writes_the_archive_of_one_process(folder):
    from habactl.data import load_source
    from habactl.distill.baselines import random_archive

    done = run_habactl("compress", "digits", "--objective", "random", "--ipc", "2", "-o", "r2.haba",
                       cwd=folder, world=2)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("wrote r2.haba") == 1  # rank 0 alone reports
    one = random_archive(load_source("digits"), folder / "r1.haba", ipc=2, seed=0)
    assert manifest(folder / "r2.haba")["content_digest"] == manifest(one)["content_digest"]
    assert "world_size" not in manifest(folder / "r2.haba")["provenance"]["hyperparameters"]
