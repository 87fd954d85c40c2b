"""`torchrun --nproc-per-node 2 -m habactl ...` on this CPU (gloo): the same numbers and
the same files as one process, only rank 0 talks, and a failing rank ends the job in one
line instead of a hang. Each torchrun test is marked slow and kept to a few seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from faults import FAIL_VARIABLE
from habactl.runtime import distributed
from helpers import (
    FIRST_LOSS_TOLERANCE,
    ROOT,
    TOLERANCE,
    error_lines,
    needs_torchrun,
    one_process_and_two_ranks,
    run_habactl,
    stored_tensors,
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    done = run_habactl(
        "compress", "digits", "--objective", "random", "--ipc", "1", "-q", "-o", "d.haba",
        cwd=folder, world=None,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder / "d.haba"


def test_one_process_is_rank_zero_of_one():
    # Outside torchrun (even with WORLD_SIZE leaking in, no group is up): one process.
    job = distributed.current()
    assert job is distributed.SINGLE
    assert (job.world_size, job.rank, job.is_main, distributed.current().is_main) == (
        1,
        0,
        True,
        True,
    )
    assert job.share(5) == [0, 1, 2, 3, 4]
    assert job.gather_objects({1: "a"}) == {1: "a"}


@pytest.mark.slow
def test_inspect_under_a_launcher_environment_without_a_group_stays_torch_free(tmp_path):
    # WORLD_SIZE alone (no RANK) is not a torchrun launch: the plain CLI, no torch.
    code = (
        "import os, sys; os.environ['WORLD_SIZE'] = '2'; sys.argv = ['habactl', '--version'];"
        "import habactl.cli.main as m\n"
        "try:\n    m.main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("habactl ")


@pytest.mark.slow
@needs_torchrun
def test_evaluate_on_two_ranks_prints_one_table_with_the_numbers_of_one_process(archive):
    args = ("evaluate", archive, "--epochs", "2", "--models", "4", "--threads", "1", "--json")
    one = run_habactl(*args, cwd=archive.parent, world=None)
    two = run_habactl(*args, cwd=archive.parent, world=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    single, split = json.loads(one.stdout), json.loads(two.stdout)  # one JSON object: rank 0's
    assert split["results"]["convnet"]["accuracies"] == single["results"]["convnet"]["accuracies"]
    assert split["protocol"]["world_size"] == 2
    assert "world_size" not in single["protocol"]


@pytest.mark.slow
@needs_torchrun
def test_an_error_on_every_rank_is_one_line(tmp_path):
    done = run_habactl("evaluate", "missing.haba", cwd=tmp_path, world=2)
    assert done.returncode != 0
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert "missing.haba: no such archive" in lines[0]
    assert lines[0].startswith("habactl: error: rank ")


@pytest.mark.slow
@needs_torchrun
def test_a_crash_on_one_rank_ends_the_job_in_one_line_without_a_hang(archive):
    # Rank 1 dies just before the gather while rank 0 waits in it: the job must end
    # (torchrun stops rank 0; the collective timeout backs it up), non-zero, one line.
    done = run_habactl(
        "evaluate", archive, "--epochs", "1", "--models", "2", "--threads", "1",
        cwd=archive.parent, env={FAIL_VARIABLE: "1"}, timeout=45,
    )  # fmt: skip
    assert done.returncode != 0
    lines = error_lines(done.stderr)
    assert lines == ["habactl: error: rank 1/2: RuntimeError: injected failure "
                     "(HABACTL_DIST_FAIL_RANK=1)"], done.stderr  # fmt: skip
    assert "Traceback" not in done.stderr.split("habactl: error:")[0]


@pytest.mark.slow
@needs_torchrun
def test_experts_on_two_ranks_write_the_files_of_one_process_and_one_complete_index(tmp_path):
    args = ("experts", "digits", "--experts", "3", "--epochs", "1", "--threads", "1", "-q")
    one = run_habactl(*args, "-o", "one", cwd=tmp_path, world=None)
    two = run_habactl(*args, "-o", "two", cwd=tmp_path, world=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stdout == ""  # -q: nothing from any rank
    single = json.loads((tmp_path / "one" / "index.json").read_text())
    split = json.loads((tmp_path / "two" / "index.json").read_text())
    assert [e["file"] for e in split["experts"]] == [e["file"] for e in single["experts"]]
    assert [e["sha256"] for e in split["experts"]] == [e["sha256"] for e in single["experts"]]
    for entry in single["experts"]:  # the trajectories themselves, byte for byte
        name = entry["file"]
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )  # no temporary files left behind


def first_loss(log: Path) -> float:
    """The loss of iteration 1 in a metrics log (rank 0's: the job's total)."""
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "iteration":
            return float(record["loss"])
    raise AssertionError(f"no iteration in {log}")


@pytest.mark.slow
@needs_torchrun
def test_compress_dm_on_two_ranks_matches_one_process_and_refuses_a_resume_on_one(tmp_path):
    args = ("compress", "digits", "--objective", "dm", "--ipc", "1", "--iterations", "12",
            "--threads", "1", "--checkpoint-every", "4")  # fmt: skip
    one = run_habactl(*args, "-q", "-o", "one.haba", "--log-file", "one.jsonl", cwd=tmp_path,
                      world=None)  # fmt: skip
    two = run_habactl(*args, "-o", "two.haba", "--log-file", "two.jsonl", cwd=tmp_path, world=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stderr.count("wrote two.haba") == 1  # rank 0 alone reports
    single_loss, split_loss = first_loss(tmp_path / "one.jsonl"), first_loss(tmp_path / "two.jsonl")
    assert split_loss == pytest.approx(single_loss, rel=FIRST_LOSS_TOLERANCE)
    single, split = stored_tensors(tmp_path / "one.haba"), stored_tensors(tmp_path / "two.haba")
    assert sorted(split) == sorted(single)
    for name in single:
        assert split[name].shape == single[name].shape, name
        assert float((split[name] - single[name]).abs().max()) < TOLERANCE, name
    from habactl.format import open_archive

    manifest = open_archive(tmp_path / "two.haba").manifest
    assert manifest["provenance"]["hyperparameters"]["world_size"] == 2
    log = (tmp_path / "two.jsonl").read_text().splitlines()
    assert sum('"event": "iteration"' in line for line in log) == 12  # one log, rank 0's
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.haba", "one.jsonl", "two.haba", "two.jsonl"
    ]  # fmt: skip

    # A checkpoint made by two ranks cannot be resumed by one process (nor the reverse).
    stopped = run_habactl(*args, "-q", "-o", "three.haba", cwd=tmp_path, world=2,
                          env={"HABACTL_FAULT_KILL_AFTER": "10"})  # fmt: skip
    assert stopped.returncode != 0  # SIGKILLed after iteration 10; checkpoint of 8 kept
    assert (tmp_path / "three.haba.ckpt").is_file()
    resumed = run_habactl(*args, "-q", "-o", "three.haba", "--resume", cwd=tmp_path, world=None)
    assert resumed.returncode == 1
    lines = error_lines(resumed.stderr)
    assert len(lines) == 1 and "made by 2 process(es), this run has 1" in lines[0], lines
    assert not (tmp_path / "three.haba").exists()

    # The same world size resumes to the very archive of the uninterrupted run.
    again = run_habactl(*args, "-q", "-o", "three.haba", "--resume", cwd=tmp_path, world=2)
    assert again.returncode == 0, again.stderr
    resumed_manifest = open_archive(tmp_path / "three.haba").manifest
    assert resumed_manifest["content_digest"] == manifest["content_digest"]
    assert not (tmp_path / "three.haba.ckpt").exists()


@pytest.mark.slow
@needs_torchrun
def test_gradient_matching_on_two_ranks_takes_the_step_of_one_process(tmp_path):
    # dsa: dc's code path plus the Siamese augmentation. One iteration: gradient matching
    # amplifies the last-bit differences of the summation order fast (measured on digits,
    # IPC 1, dc: 1e-7 after 1 iteration, 8e-5 after 2, 2e-3 after 3, 0.8 after 4), so only
    # the first step can be compared tensor by tensor.
    args = ("compress", "digits", "--objective", "dsa", "--ipc", "1", "--iterations", "1",
            "--threads", "1", "-q")  # fmt: skip
    single, split = one_process_and_two_ranks(tmp_path, *args)
    for name in single:
        assert float((split[name] - single[name]).abs().max()) < 1e-5, name


@pytest.mark.slow
@needs_torchrun
@pytest.mark.cuda
@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device (bench/gpu.sh)"
)
def test_cuda_one_rank_on_nccl_pins_its_gpu_and_writes_the_archive(tmp_path):
    args = ("compress", "mnist-5k", "--objective", "dm", "--ipc", "1", "--iterations", "3")
    done = run_habactl(*args, "--device", "cuda", "-q", "-o", "g.haba", cwd=tmp_path, world=1)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "g.haba").is_file()
