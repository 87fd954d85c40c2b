"""bfloat16 bases (`--quantize bfloat16`, format 1.1): the torch-free widening, the golden
archive, compress through it, and a 1.0 reader's refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the commands)
import habactl.cli.verify  # noqa: F401
from habactl.cli.app import app
from habactl.codecs import CodecError, Pipeline, describe_pipeline
from habactl.format import ArchiveError, open_archive, storage_account
from habactl.format.bfloat16 import widen
from habactl.format.limits import DEFAULT_LIMITS
from habactl.format.manifest import validate_manifest
from habactl.training.dataset import HabaDataset
from helpers import forge_archive

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "format" / "golden" / "v1" / "quantize-bfloat16-idc.haba"
TINY = ["--iterations", "2", "--real-per-class", "4", "-q"]


def test_widening_the_bits_is_torchs_bfloat16_for_every_pattern():
    bits = np.arange(2**16, dtype=np.uint16)
    ours = widen(bits)
    theirs = torch.from_numpy(bits.copy()).view(torch.bfloat16).float().numpy()
    assert ours.dtype == np.float32
    # Bit for bit (NaN patterns included): the widening is exact.
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_the_golden_archive_reads_the_same_with_numpy_and_with_torch():
    with open_archive(GOLDEN) as archive:
        assert archive.manifest["tensors"]["bases"]["dtype"] == "BF16"
        arrays, tensors = archive.arrays(), archive.tensors()
    assert tensors["bases"].dtype == torch.bfloat16
    assert arrays["bases"].dtype == np.float32
    assert np.array_equal(arrays["bases"], tensors["bases"].float().numpy())
    # float32's range survives (the golden holds values near 1e20 and 1e-20).
    assert np.abs(arrays["bases"]).max() > 1e19 and np.abs(arrays["bases"]).min() < 1e-19


@pytest.mark.slow
def test_verify_and_the_numpy_arrays_need_no_torch():
    code = (
        "import sys, json\n"
        "from habactl.format import open_archive, verify_archive\n"
        f"problems = verify_archive({str(GOLDEN)!r})\n"
        f"with open_archive({str(GOLDEN)!r}) as a:\n"
        "    bases = a.arrays()['bases']\n"
        "print(json.dumps([problems, str(bases.dtype), float(bases.max()), "
        "'torch' in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    problems, dtype, top, torch_loaded = json.loads(done.stdout)
    assert problems == [] and dtype == "float32" and not torch_loaded
    with open_archive(GOLDEN) as archive:
        assert top == float(archive.tensor("bases").float().max())


def test_training_sees_bfloat16_rounding_and_the_gradient_passes_straight_through():
    x = torch.randn(4, 1, 3, 5, generator=torch.Generator().manual_seed(3))
    x[0, 0, 0, 0] = 1.0 + 2**-10  # between two bfloat16 values: must round
    p = Pipeline.from_manifest(
        [{"name": "quantize", "version": 1, "configuration": {"dtype": "bfloat16"}}], (1, 3, 5)
    )
    stored = p.encode_bases(x)
    assert stored.dtype == torch.bfloat16
    learned = x.clone().requires_grad_(True)
    seen = p.decode(learned)
    assert torch.equal(seen.detach(), p.decode(stored)) and float(seen.detach()[0, 0, 0, 0]) == 1.0
    seen.sum().backward()
    assert torch.equal(learned.grad, torch.ones_like(x))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("bf16") / "b.haba"
    args = ["compress", "digits", "-o", str(path), "--codec", "raw", "--ipc", "1"]
    result = runner.invoke(app, [*args, "--quantize", "bfloat16", *TINY])
    assert result.exit_code == 0, result.output
    return path


def test_compress_bfloat16_stores_twice_the_bases_in_the_same_bytes(archive):
    with open_archive(archive) as a:
        manifest, tensors = a.manifest, a.tensors()
    assert manifest["format_version"] == "1.2"
    assert manifest["pipeline"][0]["configuration"] == {
        "dtype": "bfloat16",
        "granularity": "tensor",
    }
    # 2,560 bytes (10 float32 images of 8x8): 20 bfloat16 bases of 128 bytes.
    assert manifest["bases"]["count"] == 20
    assert manifest["tensors"]["bases"]["dtype"] == "BF16"
    account = storage_account(manifest)
    assert account.parts["bases"].bytes == 20 * 64 * 2 == account.budget_bytes
    images, labels = HabaDataset(archive).tensors()
    assert torch.equal(images, tensors["bases"].float()) and len(labels) == 20
    assert runner.invoke(app, ["verify", str(archive)]).exit_code == 0


def test_a_1_0_reader_refuses_a_bfloat16_archive_and_so_does_a_1_0_manifest(tmp_path):
    def reader_1_0(entries, shape):  # the stage set of format 1.0
        for item in entries:
            if item["name"] not in ("upsample", "hallucinate"):
                raise CodecError(f"unknown stage {item['name']!r} (known: hallucinate, upsample)")
        return describe_pipeline(entries, shape)

    with open_archive(GOLDEN) as a:
        manifest = a.manifest
        fields = {k: v for k, v in manifest.items() if k not in ("tensors", "content_digest")}
        tensors = a.tensors()
    with pytest.raises(ArchiveError, match=r"pipeline\[0\] \(stage 'quantize'\): unknown stage"):
        validate_manifest(manifest, DEFAULT_LIMITS, stages=reader_1_0)
    path = tmp_path / "old.haba"
    path.write_bytes(forge_archive(tensors, {**fields, "format_version": "1.0"}))
    with pytest.raises(ArchiveError, match=r"needs format 1\.1"):
        open_archive(path)
