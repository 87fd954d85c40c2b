"""The fine points of format/SPEC.md and the codec pages (codecs/*.md), each checked
against the code: the rules a second implementation could otherwise read differently
(the ZCA matrix's orientation, numbers a double cannot hold, text length in code points,
header padding, where each stage may stand, whole zero points, version labels, the
golden outputs' tolerance). The golden archives pass them as they are.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from habactl.codecs import CodecError, describe_pipeline
from habactl.codecs.quantize import Quantize
from habactl.codecs.spec import DESCRIPTIONS, describe_quantize
from habactl.format import (
    DEFAULT_LIMITS,
    ArchiveError,
    open_archive,
    save_archive,
    save_legacy_archive,
    verify_archive,
    verify_report,
)
from habactl.format.checks import DTYPE_SIZES, MAX_NDIM, parse_header
from habactl.format.manifest import check_version, parse_json
from habactl.training.dataset import HabaDataset
from helpers import forge_archive, make_manifest, make_tensors, rejects, rewrite

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "format" / "SPEC.md").read_text(encoding="utf-8")
GOLDEN = ROOT / "format" / "golden" / "v1"


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    manifest = make_manifest()
    return save_archive(tmp_path / "toy.haba", make_tensors(manifest), manifest)


# --- §3.3 normalisation -----------------------------------------------------------------


def test_zca_orientation_is_z_times_v_as_in_the_worked_example():
    transform = HabaDataset(GOLDEN / "zca.haba").test_transform()
    with open_archive(GOLDEN / "zca.haba") as archive:
        z = archive.tensor("normalization.zca").double()
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0
    v = ((x - 0.5) / 0.5).reshape(-1).double()
    by_hand = [sum(float(z[i, j]) * float(v[j]) for j in range(16)) for i in range(16)]
    got = transform(x).reshape(-1)
    assert torch.allclose(got.double(), torch.tensor(by_hand, dtype=torch.float64), atol=1e-6)
    assert not torch.allclose(got.double(), v @ z, atol=1e-3)  # the matrix is not symmetric
    # The numbers the spec's worked example quotes are these.
    example = SPEC[SPEC.index("**Worked example**") : SPEC.index("Producers that whiten")]
    example = example.replace("−", "-")  # the spec writes a typographic minus
    quoted = [float(n) for n in re.findall(r"`y\[\d\] = (-?[0-9.]+)`", example)]
    assert quoted == pytest.approx([float(got[0]), float(got[1])], abs=1e-5)


def test_mean_std_maps_real_pixels_per_channel():
    transform = HabaDataset(GOLDEN / "raw.haba").test_transform()  # mean 0.5, std 0.25
    x = torch.rand(2, 1, 6, 6)
    assert torch.allclose(transform(x), (x - 0.5) / 0.25)


def test_decoding_applies_no_normalisation():
    images, _ = HabaDataset(GOLDEN / "raw.haba").tensors()
    with open_archive(GOLDEN / "raw.haba") as archive:
        assert torch.equal(images, archive.tensor("bases"))


# --- numbers and text ------------------------------------------------------------------


def test_integers_a_double_cannot_hold_are_refused(toy):
    rewrite(toy, lambda m: m.update({"x-big": 10**400}))
    rejects(toy, "manifest", "out of range")


def test_hyperparameters_cannot_smuggle_huge_integers(toy):
    rewrite(toy, lambda m: m["provenance"]["hyperparameters"].update(n=-(10**309)))
    rejects(toy, "out of range")


def test_integers_within_a_double_are_read_exactly(toy):
    rewrite(toy, lambda m: (m.update({"x-big": 10**300}), m["provenance"].update(seed=2**64 - 1)))
    with open_archive(toy) as archive:
        assert archive.manifest["x-big"] == 10**300
        assert archive.manifest["provenance"]["seed"] == 2**64 - 1  # not rounded via a double


def test_parse_json_bounds_digits_before_converting():
    with pytest.raises(ArchiveError, match="401 digits"):
        parse_json("1" * 401, "manifest")
    with pytest.raises(ArchiveError, match="out of range"):
        parse_json("1" + "0" * 309, "manifest")
    assert parse_json("1" + "0" * 308, "manifest") == 10**308


def test_text_length_is_counted_in_code_points(tmp_path):
    for name, ok in (("é" * 1024, True), ("😀" * 1024, True), ("é" * 1025, False)):
        manifest = make_manifest()
        manifest["classes"][0] = name
        if ok:
            save_archive(tmp_path / "t.haba", make_tensors(manifest), manifest, overwrite=True)
            assert open_archive(tmp_path / "t.haba").manifest["classes"][0] == name
        else:
            with pytest.raises(ArchiveError, match="1 to 1024 characters"):
                save_archive(tmp_path / "t.haba", make_tensors(manifest), manifest, overwrite=True)


def test_lone_surrogates_are_refused_and_pairs_are_characters(toy):
    assert parse_json('"\\ud83d\\ude00"', "manifest") == "😀"
    with pytest.raises(ArchiveError, match="lone surrogate"):
        parse_json('{"a": ["\\ud800"]}', "manifest")
    rewrite(toy, lambda m: m["provenance"]["hyperparameters"].update(note="\ud800"))
    rejects(toy, "lone surrogate")


# --- versions, dates, ranges -------------------------------------------------------------


def test_format_version_digit_limits():
    assert check_version({"format": "haba", "format_version": "1.999999"}) == (1, 999999)
    for bad in ("1.1000000", "1.01", "01.0", "1", "1.0.0", " 1.0"):
        with pytest.raises(ArchiveError, match="MAJOR.MINOR"):
            check_version({"format": "haba", "format_version": bad})


@pytest.mark.parametrize(
    ("created", "ok"),
    [
        ("2028-02-29T23:59:60.123456789Z", True),  # leap day and leap second
        ("2026-02-29T00:00:00Z", False),
        ("2026-04-31T00:00:00Z", False),
        ("2026-00-10T00:00:00Z", False),
        ("2026-01-01T00:60:00Z", False),
        ("2026-01-01T00:00:00.1234567890Z", False),
        ("2026-01-01 00:00:00Z", False),
    ],
)
def test_created_is_a_calendar_time(toy, created, ok):
    rewrite(toy, lambda m: m["provenance"].update(created=created))
    if ok:
        assert open_archive(toy).manifest["provenance"]["created"] == created
    else:
        rejects(toy, "provenance.created")


@pytest.mark.parametrize(("value", "ok"), [(0.5, True), (1, True), (1.01, False), (0, False)])
def test_lr_decay_at_lies_in_zero_to_one(toy, value, ok):
    rewrite(toy, lambda m: m["training"]["recommended"].update(lr_decay_at=value))
    if ok:
        assert open_archive(toy).manifest["training"]["recommended"]["lr_decay_at"] == value
    else:
        rejects(toy, "lr_decay_at")


KD_RECIPE = {
    "loss": "kd",
    "temperature": 4,
    "optimizer": "adamw",
    "schedule": "cosine",
    "augmentation": "rrc_flip",
    "crop_scale": 0.08,
    "teacher": {"name": "teacher.safetensors", "sha256": "ab" * 32, "bytes": 123},
}


def test_the_distillation_recipe_fields_are_read_back(toy):
    rewrite(toy, lambda m: m["training"]["recommended"].update(KD_RECIPE))
    recommended = open_archive(toy).manifest["training"]["recommended"]
    assert {key: recommended[key] for key in KD_RECIPE} == KD_RECIPE


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("loss", "mse"),
        ("temperature", -1),
        ("optimizer", "adam"),
        ("schedule", "linear"),
        ("crop_scale", 0),
        ("teacher", {"name": "t", "sha256": "AB" * 32, "bytes": 1}),
        ("teacher", {"name": "t", "sha256": "ab" * 32, "bytes": 0}),
        ("teacher", {"name": "t", "sha256": "ab" * 32, "bytes": 1, "kind": "x"}),
    ],
)
def test_the_distillation_recipe_fields_are_checked(toy, key, value):
    rewrite(toy, lambda m: m["training"]["recommended"].update({key: value}))
    rejects(toy, key)


# --- §1 header -------------------------------------------------------------------------


def _repad(path: Path, padding: bytes, before: bytes = b"") -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    raw = data[8 : 8 + n].rstrip(b" ")
    header = before + raw + padding
    path.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n :])


@pytest.mark.parametrize("padding", [b"", b" " * 13, b"\n", b"\t\r\n "])
def test_header_may_be_padded_with_json_whitespace(toy, padding):
    _repad(toy, padding)
    with open_archive(toy) as archive:
        assert set(archive.tensors()) == {"bases", "labels"}


@pytest.mark.parametrize(("padding", "before"), [(b"\x00" * 3, b""), (b" x", b""), (b"", b" ")])
def test_other_padding_bytes_are_refused(toy, padding, before):
    _repad(toy, padding, before)
    rejects(toy, "header")


def test_the_known_dtypes_are_the_ones_the_spec_lists():
    sentence = SPEC[SPEC.index("is one of the safetensors") : SPEC.index("any other string")]
    listed = {k: int(v) for k, v in re.findall(r"`([A-Z0-9_]+)` (\d)", sentence)}
    assert listed == DTYPE_SIZES


def _header(entries: dict) -> bytes:
    return json.dumps({"__metadata__": {"haba": "{}"}, **entries}).encode()


def test_unknown_dtype_and_rank_above_eight_are_refused():
    assert MAX_NDIM == 8 and "at most **8**" in SPEC
    eight = {"t": {"dtype": "F32", "shape": [1] * 8, "data_offsets": [0, 4]}}
    _, entries = parse_header(_header(eight), 4, DEFAULT_LIMITS)
    assert entries["t"].shape == (1,) * 8
    nine = {"t": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}}
    with pytest.raises(ArchiveError, match="at most 8"):
        parse_header(_header(nine), 4, DEFAULT_LIMITS)
    unknown = {"t": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}
    with pytest.raises(ArchiveError, match="unknown dtype 'F4'"):
        parse_header(_header(unknown), 1, DEFAULT_LIMITS)


# --- §3 stages -------------------------------------------------------------------------


def test_at_most_one_stage_may_expand(tmp_path):
    stage = {
        "name": "hallucinate",
        "version": 1,
        "configuration": {"arch": "channel-affine", "count": 2, "hidden": 1, "kernel": 1},
    }
    manifest = make_manifest(pipeline=[stage, stage])
    with pytest.raises(ArchiveError, match=r"pipeline\[1\].*at most one stage may expand"):
        save_archive(tmp_path / "two.haba", make_tensors(manifest), manifest)
    assert "At most one stage may expand" in SPEC


def test_stages_are_specified_by_their_pages_not_the_package():
    section = SPEC[SPEC.index("### 3.2 Stages") : SPEC.index("### 3.3")]
    for page in ("codecs/upsample.md", "codecs/hallucinate.md"):
        assert page in section and (ROOT / page).is_file()
    assert "habactl/codecs" not in section
    # Every registered stage's page is listed there, not only those of format 1.0.
    for name in DESCRIPTIONS:
        assert f"[`codecs/{name}.md`](../codecs/{name}.md)" in section, name


# --- codec pages, files and version labels ----------------------------------------------


def test_a_zero_point_must_be_a_whole_code(tmp_path):
    with open_archive(GOLDEN / "quantize-uint4-idc.haba") as archive:
        fields = {k: v for k, v in archive.manifest.items() if k != "tensors"}
        tensors = {k: v.clone() for k, v in archive.tensors().items()}
    assert tensors["pipeline.0.zero_point"].tolist() == [8.0, 3.0]  # whole codes, as F32
    tensors["pipeline.0.zero_point"][1] = 2.5
    path = tmp_path / "half.haba"
    path.write_bytes(forge_archive(tensors, fields))
    assert verify_archive(path) == [
        "half.haba: tensor 'pipeline.0.zero_point': must hold whole numbers in 0..15 "
        "(a zero-point is a code)"
    ]
    with pytest.raises(ArchiveError, match="must hold whole numbers"):
        HabaDataset(path).tensors()
    # The decoder refuses it too, given the tensors directly.
    stage = Quantize.from_config({"dtype": "uint4", "granularity": "channel"}, (2, 3, 3))
    with pytest.raises(CodecError, match="'zero_point' must hold whole numbers in 0..15"):
        stage.load_tensors(
            {"scale": tensors["pipeline.0.scale"], "zero_point": torch.tensor([8.0, 2.5])}
        )
    assert "MUST be a whole number" in (ROOT / "codecs" / "quantize.md").read_text()


def test_an_absent_granularity_means_tensor_which_float_dtypes_allow():
    for dtype in ("float16", "bfloat16", "uint8", "uint4"):
        absent = describe_quantize({"dtype": dtype}, (2, 3, 4))
        given = describe_quantize({"dtype": dtype, "granularity": "tensor"}, (2, 3, 4))
        assert absent == given and absent.configuration["granularity"] == "tensor"
    for dtype in ("float16", "bfloat16"):
        with pytest.raises(CodecError, match="granularity 'channel' applies to the integer"):
            describe_quantize({"dtype": dtype, "granularity": "channel"}, (2, 3, 4))
    # Golden archives written with the key absent stay as they are and decode.
    omitted = []
    for path in sorted(GOLDEN.glob("*.haba")):
        with open_archive(path) as archive:
            stages = archive.manifest["pipeline"]
        if stages and stages[0]["name"] == "quantize":
            if "granularity" not in stages[0]["configuration"]:
                omitted.append(path.name)
                HabaDataset(path).tensors()
    assert len(omitted) == 3, omitted
    page = (ROOT / "codecs" / "quantize.md").read_text()
    assert "`granularity` may be absent, and then means `tensor`, for every `dtype`" in page


def test_a_stage_out_of_place_is_refused_for_its_place_before_its_configuration(tmp_path):
    manifest = make_manifest()
    path = save_archive(tmp_path / "order.haba", make_tensors(manifest), manifest)
    upsample = {"name": "upsample", "version": 1, "configuration": {"factor": 99}}
    shape = {"height": 4, "width": 4, "keep": 4}
    frequency = {"name": "frequency", "version": 1, "configuration": shape}
    both = [upsample, frequency]
    rewrite(path, lambda m: m.update(pipeline=both))
    message = rejects(path, "manifest: pipeline[1] (stage 'frequency')", "must be the first")
    assert "factor" not in message
    with pytest.raises(CodecError, match=r"pipeline\[1\]: stage 'frequency'"):
        describe_pipeline(both, (1, 1, 4))
    # Once the stage is in place, the configuration is the error.
    rewrite(path, lambda m: m.update(pipeline=[upsample]))
    rejects(path, "manifest: pipeline[0] (stage 'upsample')", "'factor' must be 1..16, got 99")
    assert "**Order of refusals.**" in SPEC


def test_frequency_vectors_agree_within_an_absolute_tolerance():
    page = (ROOT / "codecs" / "frequency.md").read_text()
    assert "**absolute** 1e-6" in page and "no\nrelative term" in page
    for path in sorted((ROOT / "codecs" / "vectors").glob("frequency-*.safetensors")):
        output = load_file(path)["output"]
        assert float(output.abs().max()) < 4  # as the page says: 1e-6 is >= 4 float32 steps
        assert float(torch.finfo(torch.float32).eps) * 2 * 4 <= 1e-6


def test_a_symbolic_link_is_followed_to_a_regular_file(tmp_path):
    manifest = make_manifest()
    target = save_archive(tmp_path / "real.haba", make_tensors(manifest), manifest)
    (tmp_path / "link.haba").symlink_to(target)
    assert verify_archive(tmp_path / "link.haba") == []
    (tmp_path / "folder").mkdir()
    (tmp_path / "to-folder.haba").symlink_to(tmp_path / "folder")
    rejects(tmp_path / "to-folder.haba", "is a folder")
    (tmp_path / "dangling.haba").symlink_to(tmp_path / "gone.haba")
    rejects(tmp_path / "dangling.haba", "no such file")
    assert "a symbolic link is followed" in SPEC


def test_a_1_1_label_on_an_archive_without_1_1_features_is_valid(tmp_path):
    manifest = make_manifest()
    path = save_legacy_archive(tmp_path / "plain.haba", make_tensors(manifest), manifest)
    assert open_archive(path).manifest["format_version"] == "1.0"
    rewrite(path, lambda m: m.update(format_version="1.1"))  # no digest to recompute
    report = verify_report(path)
    assert report == ([], "1.1", False)  # intact; the manifest has no digest to check
    assert 'A `"1.1"` archive that uses no 1.1\n  stage is valid' in SPEC


# --- §7 golden tolerance ----------------------------------------------------------------


def test_golden_outputs_match_within_the_stated_tolerance():
    match = re.search(r"`\|got − expected\| ≤ ([0-9e.-]+) \+ ([0-9e.-]+) · \|expected\|`", SPEC)
    assert match, "SPEC §7 states the tolerance"
    atol, rtol = float(match.group(1)), float(match.group(2))
    for path in sorted(GOLDEN.glob("*.haba")):
        expected = load_file(path.with_name(path.stem + ".expected.safetensors"))
        images, labels = HabaDataset(path).tensors()
        assert bool(
            ((images - expected["images"]).abs() <= atol + rtol * expected["images"].abs()).all()
        ), path.name
        assert torch.equal(labels, expected["labels"])
