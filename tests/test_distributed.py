"""`torchrun --nproc-per-node 2 -m habactl ...` on this CPU (gloo): the same numbers and
the same files as one process, only rank 0 talks, and a failing rank ends the job in one
line instead of a hang. Each torchrun test is marked slow and kept to a few seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from habactl import distributed

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def habactl(*args, cwd: Path, world: int | None = 2, env: dict | None = None, timeout=60):
    """Run habactl as one process (world None) or under torchrun with `world` ranks."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    }
    environment.update(OMP_NUM_THREADS="1", HABACTL_DIST_TIMEOUT="30", **(env or {}))
    environment["PYTHONPATH"] = str(ROOT)
    if world is None:
        command = [sys.executable, "-m", "habactl"]
    else:
        port = str(29500 + (os.getpid() % 2000))
        command = [
            str(TORCHRUN),
            "--nproc-per-node",
            str(world),
            "--master-port",
            port,
            "-m",
            "habactl",
        ]
    return subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("habactl: error:")]


needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    done = habactl(
        "compress", "digits", "--objective", "random", "--ipc", "1", "-q", "-o", "d.haba",
        cwd=folder, world=None,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder / "d.haba"


def test_one_process_is_rank_zero_of_one():
    # Outside torchrun (even with WORLD_SIZE leaking in, no group is up): one process.
    assert not distributed.active()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.my_share(5) == [0, 1, 2, 3, 4]
    assert distributed.gather_objects({1: "a"}) == {1: "a"}


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
    one = habactl(*args, cwd=archive.parent, world=None)
    two = habactl(*args, cwd=archive.parent, world=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    single, split = json.loads(one.stdout), json.loads(two.stdout)  # one JSON object: rank 0's
    assert split["results"]["convnet"]["accuracies"] == single["results"]["convnet"]["accuracies"]
    assert split["protocol"]["world_size"] == 2
    assert "world_size" not in single["protocol"]


@pytest.mark.slow
@needs_torchrun
def test_an_error_on_every_rank_is_one_line(tmp_path):
    done = habactl("evaluate", "missing.haba", cwd=tmp_path, world=2)
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
    done = habactl(
        "evaluate", archive, "--epochs", "1", "--models", "2", "--threads", "1",
        cwd=archive.parent, env={distributed.FAIL_VARIABLE: "1"}, timeout=45,
    )  # fmt: skip
    assert done.returncode != 0
    lines = error_lines(done.stderr)
    assert lines == ["habactl: error: rank 1/2: RuntimeError: injected failure "
                     "(HABACTL_DIST_FAIL_RANK=1)"], done.stderr  # fmt: skip
    assert "Traceback" not in done.stderr.split("habactl: error:")[0]


def test_torchrun_found_or_skipped():
    # The torchrun tests need the launcher next to this interpreter (pip's torch has it).
    assert TORCHRUN.exists() or shutil.which("torchrun") is None


@pytest.mark.slow
@needs_torchrun
def test_experts_on_two_ranks_write_the_files_of_one_process_and_one_complete_index(tmp_path):
    args = ("experts", "digits", "--experts", "3", "--epochs", "1", "--threads", "1", "-q")
    one = habactl(*args, "-o", "one", cwd=tmp_path, world=None)
    two = habactl(*args, "-o", "two", cwd=tmp_path, world=2)
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
