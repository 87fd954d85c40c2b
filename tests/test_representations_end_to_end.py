"""Four representations, end to end: bfloat16 bases, uint4 codes with a grid
per channel, per-class frequency masks, and uint8 DCT coefficients under HaBa + IDC. Each
is made by `compress`, then read by every command and by `HabaDataset`, and decoded
from the spec alone (numpy, the codec pages' own float64 references, no torch)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the commands)
import habactl.cli.evaluate  # noqa: F401
import habactl.cli.expand  # noqa: F401
import habactl.cli.inspect_cmd  # noqa: F401
import habactl.cli.preview  # noqa: F401
import habactl.cli.verify  # noqa: F401
from habactl.cli.app import app
from habactl.format import open_archive, storage_account
from habactl.training.dataset import HabaDataset
from helpers import compress_process

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
TINY = ["--iterations", "2", "--real-per-class", "4", "--contrast-batch", "8", "-q"]

REPRESENTATIONS = {  # name -> (compress flags, what inspect shows, the bases' stored dtype)
    "bfloat16-idc": (["--codec", "idc", "--quantize", "bfloat16"], "dtype=bfloat16", "BF16"),
    "uint4-channel-haba": (
        ["--codec", "haba", "--hallucinators", "2", "--quantize", "uint4"]
        + ["--quantize-granularity", "channel"],
        "dtype=uint4, granularity=channel",
        "U8",
    ),
    "frequency-per-class-idc": (
        ["--codec", "idc", "--frequency", "8", "--frequency-mask", "per-class"],
        "mask=per-class",
        "F32",
    ),
    "frequency-uint8-haba-idc": (
        ["--codec", "haba+idc", "--hallucinators", "2", "--frequency", "10"]
        + ["--quantize", "uint8"],
        "frequency(height=4, keep=10, width=4)",
        "U8",
    ),
}
NAMES = sorted(REPRESENTATIONS)


def _references():
    """The float64 references of codecs/vectors/make_vectors.py, written from the spec
    pages (not from habactl)."""
    path = REPO / "codecs" / "vectors" / "make_vectors.py"
    spec = importlib.util.spec_from_file_location("make_vectors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _references()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    folder = tmp_path_factory.mktemp("representations")
    out = {}
    for name in NAMES:
        path = folder / f"{name}.haba"
        flags = REPRESENTATIONS[name][0]
        result = runner.invoke(app, ["compress", "digits", "-o", str(path), *flags, *TINY])
        assert result.exit_code == 0, result.output
        out[name] = path
    return out


def spec_decode(manifest: dict, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Every item of an archive, by the spec pages' float64 references, in item order."""
    x = arrays["bases"]
    per_class = manifest["bases"]["per_class"]
    classes = np.repeat(np.arange(len(per_class)), per_class)
    for i, entry in enumerate(manifest["pipeline"]):
        name, config = entry["name"], entry["configuration"]
        prefix = f"pipeline.{i}."
        p = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        if name == "quantize" and config["dtype"] in ("float16", "bfloat16"):
            x = x.astype(np.float64)  # the reader widened bfloat16 exactly
        elif name == "quantize":
            x = REF.quantize_reference(x, config, manifest["bases"]["shape"][2], p)
        elif name == "frequency":
            own = classes if config.get("mask") == "per-class" else None
            x = REF.frequency_reference(x, p["mask"], own)
        elif name == "upsample":
            x = REF.upsample_reference(x, config["factor"], config["mode"])
        else:
            assert name == "hallucinate"
            x = np.stack(
                [REF.hallucinate_reference(b, p, v) for b in x for v in range(config["count"])]
            )
    return x


@pytest.mark.parametrize("name", NAMES)
def test_inspect_shows_the_stored_dtype_and_the_account_in_bytes(archives, name):
    _, shown, dtype = REPRESENTATIONS[name]
    result = runner.invoke(app, ["inspect", str(archives[name])])
    assert result.exit_code == 0, result.output
    words = " ".join(result.stdout.split())  # the pipeline line wraps to the terminal
    assert "format haba 1.2" in words and shown in words
    as_json = runner.invoke(app, ["inspect", "--json", str(archives[name])])
    report = json.loads(as_json.stdout)
    manifest = report["manifest"]
    assert manifest["tensors"]["bases"]["dtype"] == dtype
    account = storage_account(manifest)
    assert 0.9 < account.ratio_bytes <= 1.0  # the byte budget is filled, not exceeded


@pytest.mark.parametrize("name", NAMES)
def test_verify_says_intact_and_names_a_damaged_tensor(archives, name, tmp_path):
    result = runner.invoke(app, ["verify", str(archives[name])])
    assert result.exit_code == 0 and "intact" in result.stderr
    damaged = tmp_path / "d.haba"
    data = bytearray(archives[name].read_bytes())
    data[-1] ^= 0x01  # the last tensor's last byte
    damaged.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(damaged)])
    assert result.exit_code == 1 and "sha256 mismatch" in result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_the_dataset_expand_and_the_spec_alone_agree(archives, name, tmp_path):
    path = archives[name]
    dataset = HabaDataset(path)
    images, labels = dataset.tensors()
    with open_archive(path) as archive:
        manifest, arrays = archive.manifest, archive.arrays()
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    expected = spec_decode(manifest, arrays)
    np.testing.assert_allclose(images.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert len(dataset) == len(images) == manifest["bases"]["count"] * dataset.expansion
    assert labels.tolist() == sorted(labels.tolist())
    target = tmp_path / "x.npz"
    result = runner.invoke(app, ["expand", str(path), "-o", str(target)])
    assert result.exit_code == 0, result.output
    with np.load(target) as npz:
        np.testing.assert_array_equal(npz["images"], images.numpy())
        np.testing.assert_array_equal(npz["labels"], labels.numpy())


@pytest.mark.slow
def test_the_spec_only_reading_needs_no_torch(archives):
    code = (
        "import json, sys\n"
        "from habactl.format import open_archive, verify_archive\n"
        "out = {}\n"
        "for path in sys.argv[1:]:\n"
        "    with open_archive(path) as a:\n"
        "        arrays = a.arrays()\n"
        "    out[path] = [verify_archive(path), sorted(str(v.dtype) for v in arrays.values())]\n"
        "print(json.dumps([out, 'torch' in sys.modules]))\n"
    )
    paths = [str(archives[n]) for n in NAMES]
    done = subprocess.run(
        [sys.executable, "-c", code, *paths],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    out, torch_loaded = json.loads(done.stdout)
    assert not torch_loaded
    assert all(problems == [] for problems, _ in out.values())
    assert "uint16" not in json.dumps(out)  # bfloat16 comes back as float32 values


@pytest.mark.parametrize("name", NAMES)
def test_preview_draws_it(archives, name, tmp_path):
    target = tmp_path / "p.png"
    result = runner.invoke(app, ["preview", str(archives[name]), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_trains_on_it(archives, name):
    args = ["evaluate", str(archives[name]), "--arch", "convnet", "--epochs", "1"]
    result = runner.invoke(app, [*args, "--models", "1", "--jobs", "1", "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    with open_archive(archives[name]) as archive:
        manifest = archive.manifest
    expansion = HabaDataset(archives[name]).expansion
    assert report["archive"]["training_images"] == manifest["bases"]["count"] * expansion
    (accuracy,) = report["results"]["convnet"]["accuracies"]
    assert 0 <= accuracy <= 100


# -- resume ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_and_resumed_run_gives_the_archive_of_an_uninterrupted_one(tmp_path):
    # One run that is both a quantize run (uint4, a grid per channel) and a frequency run
    # (per-class masks), under HaBa + IDC: every stored part of them goes through a checkpoint.
    flags = ["--codec", "haba+idc", "--hallucinators", "2", "--frequency", "8"]
    flags += ["--frequency-mask", "per-class", "--quantize", "uint4"]
    flags += ["--quantize-granularity", "channel"]
    args = ["digits", *flags, "--iterations", "5", "--real-per-class", "4"]
    args += ["--no-contrastive", "--checkpoint-every", "2", "-q"]
    whole = compress_process([*args, "-o", str(tmp_path / "whole.haba")])
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed.haba"
    killed = compress_process([*args, "-o", str(out)], HABACTL_FAULT_KILL_AFTER="3")
    assert killed.returncode == -9 and not out.exists()
    resumed = compress_process([*args, "-o", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    with open_archive(out) as a, open_archive(tmp_path / "whole.haba") as b:
        assert a.manifest["content_digest"] == b.manifest["content_digest"]
        assert a.manifest["provenance"]["iterations"] == 5
        names = [e["name"] for e in a.manifest["pipeline"]]
        assert names == ["quantize", "frequency", "upsample", "hallucinate"]
    assert out.read_bytes() == (tmp_path / "whole.haba").read_bytes()


def test_the_stored_tensors_are_what_the_representation_says(archives):
    with open_archive(archives["uint4-channel-haba"]) as a:
        t = a.manifest["tensors"]
        assert t["bases"]["shape"][1:] == [1, 8, 4]  # 8 codes a row, two a byte
        assert t["pipeline.0.scale"]["shape"] == t["pipeline.0.zero_point"]["shape"] == [1]
    with open_archive(archives["frequency-per-class-idc"]) as a:
        assert a.manifest["tensors"]["pipeline.0.mask"]["shape"] == [10, 1, 4, 4]
    with open_archive(archives["frequency-uint8-haba-idc"]) as a:
        names = [e["name"] for e in a.manifest["pipeline"]]
        assert names == ["quantize", "frequency", "upsample", "hallucinate"]
        assert a.manifest["tensors"]["bases"]["shape"][1:] == [1, 1, 10]
    with open_archive(archives["bfloat16-idc"]) as a:
        assert torch.is_tensor(a.tensor("bases")) and a.tensor("bases").dtype == torch.bfloat16
