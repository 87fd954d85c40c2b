"""The quantize stage (format 1.1): rounding, training through it, archives, versions,
and hostile packed data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the commands)
import habactl.cli.expand  # noqa: F401
import habactl.cli.inspect_cmd  # noqa: F401
import habactl.cli.verify  # noqa: F401
from habactl.cli.app import app
from habactl.codecs import CodecError, Pipeline, describe_pipeline
from habactl.codecs.spec import DESCRIPTIONS
from habactl.errors import HabaError
from habactl.format import (
    ArchiveError,
    open_archive,
    save_archive,
    save_legacy_archive,
    storage_account,
)
from habactl.format.limits import DEFAULT_LIMITS
from habactl.format.manifest import validate_manifest
from habactl.training.dataset import HabaDataset
from helpers import forge_archive, one_error_line

runner = CliRunner()
GOLDEN = Path(__file__).resolve().parent.parent / "format" / "golden" / "v1"
TINY = ["--iterations", "2", "--real-per-class", "4", "--contrast-batch", "8", "-q"]


def entry(dtype: str, granularity: str = "tensor") -> dict:
    return {
        "name": "quantize",
        "version": 1,
        "configuration": {"dtype": dtype, "granularity": granularity},
    }


def pipeline(dtype: str, shape, granularity: str = "tensor") -> Pipeline:
    return Pipeline.from_manifest([entry(dtype, granularity)], shape)


# -- rounding -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, levels", [("uint8", 256), ("uint4", 16)])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_stored_codes_decode_within_half_a_step(dtype, levels, granularity):
    x = torch.randn(5, 3, 4, 7, generator=torch.Generator().manual_seed(0))
    x[:, 1] *= 10  # one channel with a far wider range
    p = pipeline(dtype, (3, 4, 7), granularity)
    stored = p.encode_bases(x)
    assert stored.dtype == torch.uint8
    assert tuple(stored.shape[1:]) == ((3, 4, 7) if dtype == "uint8" else (3, 4, 4))
    decoded = p.decode(stored)
    scale = p.stages[0].get_buffer("scale")
    step = scale.max() if granularity == "tensor" else scale.view(1, 3, 1, 1)
    assert bool(((decoded - x).abs() <= step / 2 + 1e-6).all())
    if granularity == "channel":  # the narrow channels get a finer grid than the wide one
        assert scale[0] < scale[1] / 5 and scale[2] < scale[1] / 5
    # The grid spans the data: the extremes are codes 0 and levels - 1.
    codes = p.stages[0].codes(x)
    assert codes.min() == 0 and codes.max() == levels - 1


def test_float16_stores_the_nearest_half_and_decodes_it_exactly():
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    p = pipeline("float16", (2, 3, 3))
    stored = p.encode_bases(x)
    assert stored.dtype == torch.float16 and torch.equal(p.decode(stored), x.half().float())
    assert p.named_tensors() == {}  # no scale: nothing else stored


def test_training_sees_the_stored_values_and_gradients_pass_straight_through():
    x = torch.randn(6, 1, 4, 5, generator=torch.Generator().manual_seed(2))
    p = pipeline("uint4", (1, 4, 5), "tensor")
    p.calibrate(x)
    learned = x.clone().requires_grad_(True)
    seen = p.decode(learned)
    torch.testing.assert_close(seen, p.decode(p.encode_bases(x)), rtol=0, atol=1e-6)
    assert not torch.allclose(seen, x, atol=1e-3)  # 4 bits really round
    weights = torch.arange(seen.numel(), dtype=torch.float32).view_as(seen)
    (seen * weights).sum().backward()
    assert torch.equal(learned.grad, weights)  # the identity's gradient


def test_quantize_must_be_the_first_stage():
    upsample = {"name": "upsample", "version": 1, "configuration": {"factor": 2}}
    with pytest.raises(CodecError, match="must be the first stage"):
        describe_pipeline([upsample, entry("uint8")], (1, 2, 2))
    with pytest.raises(CodecError, match="granularity 'channel' applies to the integer"):
        describe_pipeline([entry("float16", "channel")], (1, 2, 2))


# -- archives through the command line ------------------------------------------------
@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantize")
    out = {}
    for name, extra in {
        "f32": [],
        "u8": ["--quantize", "uint8"],
        "u4": ["--quantize", "uint4", "--quantize-granularity", "channel"],
    }.items():
        path = folder / f"{name}.haba"
        args = ["compress", "digits", "-o", str(path), "--codec", "raw", "--ipc", "1", *extra]
        result = runner.invoke(app, [*args, *TINY])
        assert result.exit_code == 0, result.output
        out[name] = path
    return out


def test_lower_precision_buys_more_bases_in_the_same_bytes(archives):
    counts, manifests = {}, {}
    for name, path in archives.items():
        with open_archive(path) as archive:
            manifests[name] = archive.manifest
        account = storage_account(manifests[name])
        assert account.budget_bytes == 10 * 64 * 4 and account.ratio_bytes <= 1.0
        counts[name] = manifests[name]["bases"]["count"]
    # 2,560 bytes: 10 float32 bases; uint8: (2560 - 8) // 64 = 39; uint4 per channel
    # (1 channel: 8 bytes of grid): (2560 - 8) // 32 = 79.
    assert counts == {"f32": 10, "u8": 39, "u4": 79}
    # Every new archive is 1.2 (the manifest digest), with or without a 1.1 stage.
    assert {m["format_version"] for m in manifests.values()} == {"1.2"}
    assert manifests["u4"]["tensors"]["bases"] == {
        **manifests["u4"]["tensors"]["bases"],
        "dtype": "U8",
        "shape": [79, 1, 8, 4],
    }
    assert manifests["u8"]["tensors"]["pipeline.0.scale"]["dtype"] == "F32"


def test_inspect_verify_expand_and_the_dataset_read_quantised_archives(archives, tmp_path):
    path = archives["u4"]
    shown = runner.invoke(app, ["inspect", str(path)])
    assert shown.exit_code == 0 and "quantize(dtype=uint4" in shown.stdout
    assert "haba 1.2" in shown.stdout
    assert runner.invoke(app, ["verify", str(path)]).exit_code == 0
    with open_archive(path) as archive:
        tensors = archive.tensors()
        manifest = archive.manifest
    images, labels = HabaDataset(path).tensors()
    # Independently: unpack the nibbles and apply (code - zero_point) * scale.
    packed = tensors["bases"].numpy().astype(np.int64)
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(*packed.shape[:-1], -1)[..., :8]
    scale, zero = tensors["pipeline.0.scale"].numpy(), tensors["pipeline.0.zero_point"].numpy()
    expected = (codes - zero.reshape(1, -1, 1, 1)) * scale.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(images.numpy(), expected, rtol=0, atol=1e-6)
    assert len(labels) == manifest["bases"]["count"] == 79
    target = tmp_path / "x.npz"
    assert runner.invoke(app, ["expand", str(path), "-o", str(target)]).exit_code == 0
    with np.load(target) as npz:
        stored = [npz[k] for k in npz.files if npz[k].ndim == 4]
    assert stored and stored[0].shape[0] == 79


def test_a_quantised_run_is_reproducible_byte_for_byte(archives, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.haba"
        args = ["compress", "digits", "-o", str(path), "--codec", "idc", "--quantize", "uint8"]
        assert runner.invoke(app, [*args, *TINY]).exit_code == 0
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


# -- versions -------------------------------------------------------------------------
def test_a_1_0_reader_refuses_a_1_1_archive_cleanly(archives):
    def reader_1_0(entries, shape):  # the stage set of format 1.0
        for item in entries:
            if item["name"] not in ("upsample", "hallucinate"):
                raise CodecError(f"unknown stage {item['name']!r} (known: hallucinate, upsample)")
        return describe_pipeline(entries, shape)

    with open_archive(archives["u8"]) as archive:
        manifest = archive.manifest
    with pytest.raises(ArchiveError, match=r"pipeline\[0\] \(stage 'quantize'\): unknown stage"):
        validate_manifest(manifest, DEFAULT_LIMITS, stages=reader_1_0)
    assert "quantize" in DESCRIPTIONS and DESCRIPTIONS["quantize"].since_minor == 1


def test_quantize_in_a_1_0_archive_is_refused_and_the_writer_picks_1_1():
    golden = GOLDEN / "quantize-float16-haba.haba"
    with open_archive(golden) as archive:
        manifest = {
            k: v for k, v in archive.manifest.items() if k not in ("tensors", "content_digest")
        }
        tensors = archive.tensors()
    assert manifest["format_version"] == "1.1"
    with pytest.raises(ArchiveError, match="writes 1.1 for this archive"):
        save_legacy_archive("/nonexistent/x.haba", tensors, {**manifest, "format_version": "1.0"})
    with pytest.raises(ArchiveError, match="writes 1.2 for this archive"):
        save_archive("/nonexistent/x.haba", tensors, {**manifest, "format_version": "1.0"})
    forged = forge_archive(tensors, {**manifest, "format_version": "1.0"})
    with pytest.raises(ArchiveError, match=r"needs format 1\.1"):
        _open(forged)


# -- hostile packed data --------------------------------------------------------------
def _open(data: bytes, tmp: Path | None = None) -> tuple:
    import tempfile

    folder = Path(tmp or tempfile.mkdtemp())
    path = folder / "forged.haba"
    path.write_bytes(data)
    images, labels = HabaDataset(path).tensors()
    return images, labels


@pytest.fixture()
def uint4_golden():
    with open_archive(GOLDEN / "quantize-uint4-idc.haba") as archive:
        manifest = {
            k: v for k, v in archive.manifest.items() if k not in ("tensors", "content_digest")
        }
        return manifest, archive.tensors()


def test_packed_bases_of_the_wrong_size_are_refused_before_reading_data(uint4_golden, tmp_path):
    manifest, tensors = uint4_golden
    unpacked = torch.zeros(4, 2, 3, 3, dtype=torch.uint8)  # not packed: 3 bytes a row, not 2
    with pytest.raises(ArchiveError, match=r"tensor 'bases': is U8 \[4, 2, 3, 3\].*implies U8"):
        _open(forge_archive({**tensors, "bases": unpacked}, manifest), tmp_path)
    as_float = torch.zeros(4, 2, 3, 2)
    with pytest.raises(ArchiveError, match=r"tensor 'bases': is F32.*implies U8"):
        _open(forge_archive({**tensors, "bases": as_float}, manifest), tmp_path)
    # A count that claims far more packed bases than the limits allow: refused from the
    # manifest alone (nothing allocated), whatever the data section holds.
    huge = {**manifest, "bases": {**manifest["bases"], "count": 2**40, "per_class": [2**39] * 2}}
    with pytest.raises(ArchiveError, match="limit"):
        _open(forge_archive(tensors, huge), tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t["bases"].__setitem__((0, 0, 0, 1), 0xF5), "padding nibble"),
        (lambda t: t["pipeline.0.zero_point"].fill_(16.0), "zero_point': must lie in 0..15"),
        (lambda t: t["pipeline.0.scale"].fill_(0.0), "scale': must be positive"),
    ],
)
def test_hostile_codes_and_grids_are_refused(uint4_golden, tmp_path, change, message):
    manifest, tensors = uint4_golden
    tensors = {k: v.clone() for k, v in tensors.items()}
    change(tensors)
    with pytest.raises(HabaError, match=message):
        _open(forge_archive(tensors, manifest), tmp_path)


def test_preview_draws_a_quantised_archive(archives, tmp_path):
    import habactl.cli.preview  # noqa: F401

    target = tmp_path / "p.png"
    result = runner.invoke(app, ["preview", str(archives["u8"]), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quantize", "int3"], "'dtype' must be one of float16, bfloat16, uint8, uint4"),
        (["--quantize-granularity", "channel"], "--quantize-granularity applies with --quantize"),
        (["--quantize", "float16", "--quantize-granularity", "channel"], "applies to the integer"),
        (["--objective", "random", "--quantize", "uint8"], "does not apply to --objective random"),
    ],
)
def test_bad_quantize_options_are_one_clear_error(tmp_path, args, message):
    out = tmp_path / "x.haba"
    result = runner.invoke(app, ["compress", "digits", "-o", str(out), *args, *TINY])
    assert result.exit_code != 0 and message in one_error_line(result)
    assert not out.exists()
