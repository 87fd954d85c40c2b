"""`compress --objective rded` and `--objective sre2l` under `torchrun --nproc-per-node 2`
(gloo on this CPU). rded splits the classes (class k on rank k mod 2) and the ranks sum
their selections: the archive's tensors are those of one process. sre2l splits its
teacher batches (batch b on rank b mod 2) and the engine sums the gradients: the same
steps up to the order of floating-point sums."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import TOLERANCE, digits_teacher, needs_torchrun, run_habactl

pytestmark = [pytest.mark.slow, needs_torchrun, pytest.mark.usefixtures("one_thread")]


def manifest(path: Path) -> dict:
    from habactl.format import open_archive

    archive = open_archive(path)
    try:
        return archive.manifest
    finally:
        archive.close()


def bases(path: Path) -> torch.Tensor:
    from habactl.format import open_archive

    with open_archive(path) as archive:
        return archive.tensor("bases").clone()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher-dist")
    digits_teacher(folder / "teacher.safetensors")
    return folder


def test_rded_on_two_ranks_selects_what_one_process_selects(folder):
    args = ("compress", "digits", "--objective", "rded", "--teacher", "teacher.safetensors",
            "--codec", "idc", "--candidates", "40", "--threads", "1", "-q")  # fmt: skip
    for world, name in ((2, "two.haba"), (None, "one.haba")):
        done = run_habactl(*args, "-o", name, cwd=folder, world=world, timeout=120)
        assert done.returncode == 0, done.stderr
    assert manifest(folder / "two.haba")["provenance"]["hyperparameters"]["world_size"] == 2
    assert torch.equal(bases(folder / "two.haba"), bases(folder / "one.haba"))


def test_sre2l_on_two_ranks_takes_the_steps_of_one_process(folder):
    # 10 images in teacher batches of 4: three batches, two on rank 0 and one on rank 1
    (folder / "small-batches.toml").write_text("[settings]\nbatch = 4\n")
    args = ("compress", "digits", "--objective", "sre2l", "--teacher", "teacher.safetensors",
            "--codec", "raw", "--iterations", "4", "--config", "small-batches.toml",
            "--threads", "1", "-q")  # fmt: skip
    for world, name in ((2, "s2.haba"), (None, "s1.haba")):
        done = run_habactl(*args, "-o", name, cwd=folder, world=world, timeout=120)
        assert done.returncode == 0, done.stderr
    one, two = bases(folder / "s1.haba"), bases(folder / "s2.haba")
    assert float((one - two).abs().max()) < TOLERANCE
    # what the steps moved is far more than the ranks disagree on
    args = tuple("0" if value == "4" else value for value in args)
    done = run_habactl(*args, "-o", "s0.haba", cwd=folder, world=None, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float((one - bases(folder / "s0.haba")).abs().max()) > 10 * TOLERANCE
