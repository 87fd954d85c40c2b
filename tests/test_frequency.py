"""The frequency stage (FreD-style, format 1.1): the inverse DCT against scipy, the mask
chosen by energy, archives through the command line, composition rules, hostile masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the commands)
import habactl.cli.expand  # noqa: F401
import habactl.cli.verify  # noqa: F401
from habactl.cli.app import app
from habactl.codecs import CodecError, Pipeline, describe_pipeline
from habactl.distill.errors import DistillError
from habactl.distill.planner import plan_pipeline
from habactl.errors import HabaError
from habactl.format import open_archive, storage_account
from habactl.training.dataset import HabaDataset
from helpers import forge_archive, place

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
TINY = ["--iterations", "2", "--real-per-class", "4", "--contrast-batch", "8", "-q"]


def frequency(h: int, w: int, keep: int) -> dict:
    return {
        "name": "frequency",
        "version": 1,
        "configuration": {"height": h, "keep": keep, "width": w},
    }


@pytest.mark.parametrize("h, w, keep, c", [(5, 7, 9, 2), (8, 8, 64, 1), (6, 4, 1, 3)])
def test_decoding_is_scipys_orthonormal_inverse_dct(h, w, keep, c):
    p = Pipeline.from_manifest([frequency(h, w, keep)], (c, 1, keep))
    p.stages[0].fit(torch.randn(20, c, h, w, generator=torch.Generator().manual_seed(h)))
    x = torch.randn(4, c, 1, keep, generator=torch.Generator().manual_seed(1))
    got = p.decode(x).numpy()
    mask = p.named_tensors()["pipeline.0.mask"].numpy()
    expected = scipy.fft.idctn(place(x.double().numpy(), mask), axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("path", sorted((ROOT / "codecs" / "vectors").glob("frequency-*")))
def test_the_vectors_agree_with_scipy(path):
    with safe_open(str(path), "np") as f:
        x, mask, output = (f.get_tensor(k) for k in ("input", "mask", "output"))
        classes = f.get_tensor("classes") if "classes" in f.keys() else None
    placed = place(x.astype(np.float64), mask, classes)
    expected = scipy.fft.idctn(placed, axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(output, expected, rtol=0, atol=1e-6)


def test_the_mask_keeps_the_coefficients_of_most_energy_and_analysis_inverts():
    stage = Pipeline.from_manifest([frequency(4, 4, 3)], (1, 1, 3)).stages[0]
    # Images made of three known frequencies, of decreasing weight; others absent.
    coeffs = np.zeros((50, 1, 4, 4))
    rng = np.random.default_rng(0)
    for (u, v), weight in {(2, 1): 3.0, (0, 3): 2.0, (1, 1): 1.0}.items():
        coeffs[:, 0, u, v] = weight * rng.standard_normal(50)
    images = torch.tensor(scipy.fft.idctn(coeffs, axes=(-2, -1), norm="ortho"))
    stage.fit(images)
    kept = {tuple(int(i) for i in p) for p in torch.nonzero(stage.get_buffer("mask")[0])}
    assert kept == {(2, 1), (0, 3), (1, 1)}
    # Images inside the kept subspace are reproduced exactly by analyse -> decode.
    torch.testing.assert_close(stage(stage.analyse(images)).double(), images, atol=1e-5, rtol=0)


def test_composition_rules():
    upsample = {"name": "upsample", "version": 1, "configuration": {"factor": 2}}
    quantize = {"name": "quantize", "version": 1, "configuration": {"dtype": "uint8"}}
    ok = describe_pipeline([quantize, frequency(4, 4, 5), upsample], (1, 1, 5))
    assert ok.out_shape == (1, 8, 8) and ok.minor == 1
    assert ok.dtypes == {"bases": "U8", "pipeline.1.mask": "U8"}
    with pytest.raises(CodecError, match="must be the first stage, or follow a first quantize"):
        describe_pipeline([upsample, frequency(8, 8, 5)], (1, 2, 2))
    with pytest.raises(CodecError, match="configuration 'keep' must be 1..16"):
        describe_pipeline([frequency(4, 4, 17)], (1, 1, 17))
    with pytest.raises(DistillError, match="must decode to 8x8"):
        plan_pipeline([frequency(4, 4, 5)], (1, 8, 8), 10, 1)


def test_the_planner_counts_the_mask():
    plan = plan_pipeline([frequency(8, 8, 16)], (1, 8, 8), 10, 1)
    # 2,560 bytes: a 64-byte mask, then 16 float32 coefficients = 64 bytes a basis.
    assert plan.pipeline_bytes == 64 and plan.basis_bytes == 64
    assert plan.bases == (2560 - 64) // 64 == 39


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("frequency") / "f.haba"
    args = ["compress", "digits", "-o", str(path), "--codec", "idc", "--frequency", "8"]
    result = runner.invoke(app, [*args, "--ipc", "1", *TINY])
    assert result.exit_code == 0, result.output
    return path


def test_compress_frequency_then_read_it_back(archive, tmp_path):
    with open_archive(archive) as a:
        manifest, tensors = a.manifest, a.tensors()
    assert manifest["format_version"] == "1.2"
    assert [e["name"] for e in manifest["pipeline"]] == ["frequency", "upsample"]
    assert manifest["pipeline"][0]["configuration"] == {"height": 4, "keep": 8, "width": 4}
    mask = tensors["pipeline.0.mask"]
    assert mask.dtype == torch.uint8 and int(mask.sum()) == 8
    account = storage_account(manifest)
    assert account.parts["hallucinators"].bytes == 16  # the mask is counted
    assert account.counted_bytes <= account.budget_bytes
    assert runner.invoke(app, ["verify", str(archive)]).exit_code == 0
    images, labels = HabaDataset(archive).tensors()
    assert images.shape == (manifest["bases"]["count"], 1, 8, 8)
    target = tmp_path / "x.npz"
    assert runner.invoke(app, ["expand", str(archive), "-o", str(target)]).exit_code == 0


def test_a_mask_that_keeps_the_wrong_number_is_refused(archive, tmp_path):
    with open_archive(archive) as a:
        manifest = {k: v for k, v in a.manifest.items() if k not in ("tensors", "content_digest")}
        tensors = {k: v.clone() for k, v in a.tensors().items()}
    tensors["pipeline.0.mask"].view(-1)[torch.argmin(tensors["pipeline.0.mask"].view(-1))] = 1
    path = tmp_path / "bad.haba"
    path.write_bytes(forge_archive(tensors, manifest))
    with pytest.raises(HabaError, match="keep exactly 8"):
        HabaDataset(path).tensors()


@pytest.mark.slow
def test_frequency_composes_with_quantize_upsample_and_hallucinate(tmp_path):
    path = tmp_path / "all.haba"
    args = ["compress", "digits", "-o", str(path), "--codec", "haba+idc", "--frequency", "10"]
    result = runner.invoke(app, [*args, "--quantize", "uint8", "--ipc", "2", *TINY])
    assert result.exit_code == 0, result.output
    with open_archive(path) as a:
        manifest = a.manifest
    names = [e["name"] for e in manifest["pipeline"]]
    assert names == ["quantize", "frequency", "upsample", "hallucinate"]
    assert manifest["tensors"]["bases"]["dtype"] == "U8"
    assert manifest["tensors"]["bases"]["shape"][1:] == [1, 1, 10]
    account = storage_account(manifest)
    assert account.counted_bytes <= account.budget_bytes == 2 * 10 * 64 * 4
    images, _ = HabaDataset(path).tensors()
    assert images.shape == (manifest["bases"]["count"] * 5, 1, 8, 8)
    assert bool(torch.isfinite(images).all())
