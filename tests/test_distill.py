"""The distillation engine through `habactl compress` and its Python API, at tiny settings.

`digits` (8x8) keeps every run to a fraction of a second per iteration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the command)
import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
from habactl.cli.app import app
from habactl.data import load_source
from habactl.distill import DistillConfig, Distiller
from habactl.format import open_archive, storage_account
from helpers import EPOCH, compress_process, one_error_line

runner = CliRunner()
TINY = ["--iterations", "3", "--real-per-class", "4", "--contrast-batch", "8"]


def run(*args) -> object:
    return runner.invoke(app, ["compress", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def held_out_loss(tensors: dict, codec: str, ipc: int) -> float:
    """The DM loss of stored tensors on digits, always with the same random networks, real
    images and augmentations, so that two sets of tensors can be compared."""
    distiller = Distiller(
        load_source("digits"),
        DistillConfig(
            codec=codec,
            ipc=ipc,
            iterations=0,
            contrastive=False,
            objective_settings={"real_per_class": 4},
        ),
    )
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        distiller.synthetic.bases.copy_(tensors["bases"])
        distiller.synthetic.pipeline.load_tensors(
            {name: t for name, t in tensors.items() if name.startswith("pipeline.")}
        )
        return sum(
            float(distiller.objective.loss(distiller.synthetic, generator)[0]) for _ in range(8)
        )


@pytest.mark.parametrize(
    "codec, ipc, expansion", [("raw", 1, 1), ("idc", 1, 1), ("haba", 2, 5), ("haba+idc", 1, 5)]
)
def test_each_codec_end_to_end(tmp_path, codec, ipc, expansion):
    out = tmp_path / "a.haba"
    result = run("digits", "-o", out, "--codec", codec, "--ipc", ipc, *TINY)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and "habactl inspect" in result.stderr
    with open_archive(out) as archive:
        manifest = archive.manifest
        tensors = archive.tensors()
    account = storage_account(manifest)
    assert account.ratio <= 1.0  # honest: everything stored fits the budget
    assert manifest["provenance"]["objective"] == "dm"
    assert manifest["provenance"]["iterations"] == 3
    hyper = manifest["provenance"]["hyperparameters"]
    assert hyper["budget"]["codec"] == codec
    assert hyper["budget"]["stored_values"] == account.stored_values
    assert (hyper["contrastive"] is not None) == (expansion > 1)
    stages = [s["name"] for s in manifest["pipeline"]]
    assert ("upsample" in stages) == codec.endswith("idc")
    assert ("hallucinate" in stages) == codec.startswith("haba")
    assert all(bool(torch.isfinite(t.float()).all()) for t in tensors.values())
    # Learned, not sampled: the bases moved away from the (downsampled) real images they
    # started as (the same run with no iterations), and that lowered the loss.
    start = tmp_path / "start.haba"
    assert (
        run(
            "digits", "-o", start, "--codec", codec, "--ipc", ipc, *TINY, "--iterations", "0"
        ).exit_code
        == 0
    )
    with open_archive(start) as archive:
        initial = archive.tensors()
    assert (tensors["bases"] - initial["bases"]).abs().max() > 0.01
    assert held_out_loss(tensors, codec, ipc) < held_out_loss(initial, codec, ipc)
    assert not (
        tmp_path / "a.haba.ckpt"
    ).exists()  # the checkpoint goes once the archive is written


def test_options_left_out_take_each_objectives_own_defaults(tmp_path):
    """dm and dc have different defaults for --real-per-class and --views; the CLI must
    not impose dm's on dc."""
    for objective, expected in (("dm", (32, 1)), ("dc", (64, 0))):
        out = tmp_path / f"{objective}.haba"
        result = run(
            "digits",
            "-o",
            out,
            "--objective",
            objective,
            "--codec",
            "raw",
            "--iterations",
            "1",
            "-q",
        )
        assert result.exit_code == 0, result.output
        with open_archive(out) as archive:
            recorded = archive.manifest["provenance"]["hyperparameters"]["objective"]
        assert (recorded["real_per_class"], recorded["views"]) == expected, objective


def test_manifest_records_every_hyperparameter(tmp_path):
    out = tmp_path / "h.haba"
    result = run(
        "digits",
        "-o",
        out,
        "--iterations",
        "2",
        "--real-per-class",
        "3",
        "--views",
        "2",
        "--lr-bases",
        "0.5",
        "--lr-hallucinators",
        "0.02",
        "--momentum",
        "0.4",
        "--contrast-weight",
        "0.2",
        "--extractor-lr",
        "0.002",
        "--contrast-batch",
        "5",
        "--hallucinators",
        "3",
        "--augment",
        "crop_scale",
        "--seed",
        "7",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # --quiet
    with open_archive(out) as archive:
        provenance = archive.manifest["provenance"]
    hyper = provenance["hyperparameters"]
    assert provenance["seed"] == 7 and provenance["iterations"] == 2
    assert hyper["objective"] == {
        "name": "dm",
        "real_per_class": 3,
        "views": 2,
        "embed_arch": "convnet",
        "embed_width": 1.0,
        "siamese": "class",
    }
    assert hyper["optimizer"] == {
        "name": "sgd",
        "lr_bases": 0.5,
        "lr_hallucinators": 0.02,
        "momentum": 0.4,
    }
    assert hyper["contrastive"]["weight"] == 0.2 and hyper["contrastive"]["lr"] == 0.002
    assert hyper["contrastive"]["batch"] == 5 and hyper["contrastive"]["temperature"] == 0.07
    assert (
        hyper["augmentation"]["strategy"] == "crop_scale" and hyper["augmentation"]["flip"] is False
    )
    assert hyper["pipeline"]["hallucinators"] == 3 and hyper["pipeline"]["factor"] == 2
    assert hyper["init"]["bases"] == "real" and hyper["init"]["hallucinators"] == "near-identity"
    assert hyper["budget"]["counts"] == "all" and hyper["device"] == "cpu"
    assert hyper["threads"] == torch.get_num_threads()
    # Every field of the config is accounted for somewhere in the record.
    recorded = json.dumps(hyper)
    for name in (
        "lr_bases",
        "lr_hallucinators",
        "momentum",
        "hallucinator_noise",
        "leftover",
        "real_per_class",
        "views",
        "weight",
        "supcon",
        "ce",
        "kernel",
        "hidden",
    ):
        assert f'"{name}"' in recorded, name


@pytest.mark.slow  # 20 steps and 8 loss evaluations at 28x28: seconds, not milliseconds
def test_loss_goes_down_on_a_tiny_problem():
    # 28x28 (digits' 8x8 maps shrink to 2x2 before the last instance norm, which leaves
    # DM little to match); a narrow embedder keeps it to a couple of seconds.
    source = load_source("mnist-5k")
    config = DistillConfig(
        codec="raw",
        iterations=0,
        contrastive=False,
        objective_settings={"real_per_class": 16, "embed_width": 0.25},
    )
    distiller = Distiller(source, config)

    def held_out_loss() -> float:
        # The same random networks, real images and augmentations before and after.
        generator = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            return sum(
                float(distiller.objective.loss(distiller.synthetic, generator)[0]) for _ in range(4)
            )

    before = held_out_loss()
    for _ in range(20):
        distiller.step()
    after = held_out_loss()
    assert after < 0.7 * before, (before, after)


@pytest.mark.slow  # three compress runs
def test_same_seed_gives_a_byte_identical_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    paths = [tmp_path / "one.haba", tmp_path / "two.haba", tmp_path / "other.haba"]
    for path, seed in zip(paths, (3, 3, 4)):
        assert run("digits", "-o", path, "--seed", seed, *TINY, "-q").exit_code == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


@pytest.mark.slow
def test_killed_and_resumed_run_gives_the_same_archive(tmp_path):
    args = [
        "digits",
        "--iterations",
        "5",
        "--real-per-class",
        "4",
        "--contrast-batch",
        "8",
        "--checkpoint-every",
        "2",
        "-q",
    ]
    whole = compress_process([*args, "-o", str(tmp_path / "whole.haba")])
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed.haba"
    killed = compress_process([*args, "-o", str(out), "--log"], HABACTL_FAULT_KILL_AFTER="3")
    assert killed.returncode == -9  # a real SIGKILL after iteration 3
    assert not out.exists() and (tmp_path / "killed.haba.ckpt").exists()

    resumed = compress_process([*args, "-o", str(out), "--resume", "--log"])
    assert resumed.returncode == 0, resumed.stderr
    events = [
        json.loads(line) for line in (tmp_path / "killed.haba.jsonl").read_text().splitlines()
    ]
    assert any(e["event"] == "resume" and e["iteration"] == 2 for e in events)
    with open_archive(out) as a, open_archive(tmp_path / "whole.haba") as b:
        assert a.manifest["content_digest"] == b.manifest["content_digest"]
    assert out.read_bytes() == (tmp_path / "whole.haba").read_bytes()


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    out = tmp_path / "r.haba"
    fresh = run("digits", "-o", tmp_path / "fresh.haba", *TINY, "--resume")  # nothing to resume
    assert fresh.exit_code == 0 and "no checkpoint at" in fresh.stderr  # starts from iteration 0
    ckpt = tmp_path / "r.haba.ckpt"
    env = {"HABACTL_FAULT_KILL_AFTER": "2"}
    killed = compress_process(
        ["digits", "-o", str(out), *TINY, "--checkpoint-every", "1", "-q"], **env
    )
    assert killed.returncode == -9 and ckpt.exists()
    result = run("digits", "-o", out, *TINY, "--checkpoint-every", "1", "--seed", "9", "--resume")
    assert result.exit_code == 1 and "other settings" in one_error_line(result)
    result = run("digits", "-o", out, *TINY)  # a fresh start would destroy the unfinished run
    assert result.exit_code == 1 and "--resume" in one_error_line(result)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["no-such-set"], "no-such-set"),
        (["digits", "--codec", "haba", "--ipc", "1"], "budget too small"),
        (["digits", "--real-per-class", "100000"], "more real images than class"),
        (["digits", "--ipc", "1000"], "no compression"),
        (["digits", "--lr-bases", "1e30", "--iterations", "6", "-q"], "lower the learning rate"),
        (["digits", "--codec", "raw", "--contrastive"], "contrastive term needs"),
        (["digits", "--device", "tpu"], "unknown device"),
        (["digits", "--objective", "dx"], "unknown objective"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    result = run("-o", tmp_path / "x.haba", *TINY, *args)  # later options win
    assert result.exit_code == 1, result.output
    line = one_error_line(result)
    assert message in line
    assert list(tmp_path.iterdir()) == []


def test_non_finite_loss_names_the_iteration(tmp_path):
    result = run(
        "digits",
        "-o",
        tmp_path / "x.haba",
        "--lr-bases",
        "1e30",
        "--iterations",
        "6",
        "--real-per-class",
        "4",
        "--codec",
        "raw",
        "-q",
    )
    line = one_error_line(result)
    assert "at iteration" in line and "nothing was written" in line


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "x.haba"
    out.write_bytes(b"precious")
    result = run("digits", "-o", out, *TINY)
    assert result.exit_code == 1 and "--force" in one_error_line(result)
    assert out.read_bytes() == b"precious"
    assert run("digits", "-o", out, *TINY, "--force", "-q").exit_code == 0
    with open_archive(out) as archive:
        assert archive.manifest["provenance"]["objective"] == "dm"


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_resume_finishes(tmp_path):
    import signal
    import time

    out = tmp_path / "c.haba"
    log = tmp_path / "c.jsonl"
    code = (
        "import habactl.cli.compress, habactl.cli.inspect_cmd; "
        "from habactl.cli.app import app; app()"
    )
    args = [
        "compress",
        "digits",
        "-o",
        str(out),
        "--iterations",
        "20",
        "--real-per-class",
        "4",
        "--contrast-batch",
        "8",
        "--log-file",
        str(log),
        "-q",
    ]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        log.exists() and '"event": "iteration"' in log.read_text()
    ):
        time.sleep(0.02)  # Ctrl-C once the first iteration is done
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "--resume" in err and "checkpoint" in err
    assert not out.exists() and (tmp_path / "c.haba.ckpt").exists()
    stopped = [json.loads(line) for line in log.read_text().splitlines()][-1]
    assert stopped["event"] == "interrupted" and 0 < stopped["iteration"] < 20
    result = run(
        "digits",
        "-o",
        out,
        "--iterations",
        "20",
        "--real-per-class",
        "4",
        "--contrast-batch",
        "8",
        "--resume",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "c.haba.ckpt").exists()


def test_counting_bases_only_is_recorded_and_the_account_stays_true(tmp_path):
    out = tmp_path / "b.haba"
    result = run("digits", "-o", out, *TINY, "--budget-counts", "bases")
    assert result.exit_code == 0, result.output
    assert "bases only" in result.stderr
    with open_archive(out) as archive:
        account = storage_account(archive.manifest)
        assert archive.manifest["storage"]["counts"] == "bases"
    # 4x4 bases: 4 per class fill the 64-value budget; the 5 hallucinators come on top.
    assert archive.manifest["bases"]["per_class"] == [4] * 10
    assert account.claim_ratio == pytest.approx(1.0)
    assert account.ratio == pytest.approx((640 + 320) / 640)
