"""Per-class frequency masks (`--frequency-mask per-class`): each class keeps its own
frequencies, stored and counted; every basis decodes through its class's mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the commands)
import habactl.cli.verify  # noqa: F401
from habactl.cli.app import app
from habactl.codecs import CodecError, Pipeline, describe_pipeline
from habactl.codecs.pipeline import basis_classes
from habactl.distill.planner import plan_pipeline
from habactl.errors import HabaError
from habactl.format import ArchiveError, open_archive, storage_account
from habactl.training.dataset import HabaDataset
from helpers import forge_archive, one_error_line, place

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
GOLDEN = Path(__file__).resolve().parent.parent / "format" / "golden" / "v1"
TINY = ["--iterations", "2", "--real-per-class", "4", "-q"]


def per_class(h: int, w: int, keep: int, classes: int) -> dict:
    configuration = {"classes": classes, "height": h, "keep": keep, "mask": "per-class", "width": w}
    return {"name": "frequency", "version": 1, "configuration": configuration}


def idct(coefficients: np.ndarray) -> np.ndarray:
    return scipy.fft.idctn(coefficients, axes=(-2, -1), norm="ortho")


def test_the_mask_is_one_per_class_and_the_configuration_is_checked():
    spec = describe_pipeline([per_class(4, 5, 6, 3)], (2, 1, 6))
    assert spec.params == {"pipeline.0.mask": (3, 2, 4, 5)} and spec.classes == 3
    shared = describe_pipeline(
        [{**per_class(4, 5, 6, 3), "configuration": {"height": 4, "keep": 6, "width": 5}}],
        (2, 1, 6),
    )
    assert shared.params == {"pipeline.0.mask": (2, 4, 5)} and shared.classes is None
    bad = per_class(4, 5, 6, 3)
    del bad["configuration"]["classes"]
    with pytest.raises(CodecError, match="configuration 'classes' is required"):
        describe_pipeline([bad], (2, 1, 6))
    bad = per_class(4, 5, 6, 3)
    bad["configuration"]["mask"] = "shared"
    with pytest.raises(CodecError, match="'classes' applies to mask 'per-class'"):
        describe_pipeline([bad], (2, 1, 6))


def test_each_class_keeps_the_frequencies_of_its_own_images():
    # Class 0 lives at frequency (0, 1), class 1 at (2, 2); both share a weaker (1, 0).
    rng = np.random.default_rng(0)
    coeffs = np.zeros((40, 1, 3, 3))
    coeffs[:20, 0, 0, 1] = 3 * rng.standard_normal(20)
    coeffs[20:, 0, 2, 2] = 2 * rng.standard_normal(20)
    coeffs[:, 0, 1, 0] = 2.5 * rng.standard_normal(40)
    images = torch.tensor(idct(coeffs), dtype=torch.float32)
    labels = torch.tensor([0] * 20 + [1] * 20)
    stage = Pipeline.from_manifest([per_class(3, 3, 2, 2)], (1, 1, 2)).stages[0]
    stage.fit(images, labels)
    kept = [{tuple(p[1:].tolist()) for p in torch.nonzero(m)} for m in stage.get_buffer("mask")]
    assert kept == [{(0, 1), (1, 0)}, {(2, 2), (1, 0)}]
    with pytest.raises(CodecError, match="class 1 has no images"):
        stage.fit(images[:20], labels[:20])


def test_every_basis_decodes_through_its_class_mask_as_scipy_does():
    p = Pipeline.from_manifest([per_class(4, 5, 6, 3)], (2, 1, 6))
    images = torch.randn(30, 2, 4, 5, generator=torch.Generator().manual_seed(4))
    p.stages[0].fit(images, torch.arange(30) % 3)
    mask = p.named_tensors()["pipeline.0.mask"].numpy()
    assert not np.array_equal(mask[0], mask[1]) or not np.array_equal(mask[1], mask[2])
    x = torch.randn(5, 2, 1, 6, generator=torch.Generator().manual_seed(5))
    classes = torch.tensor([2, 0, 1, 1, 0])
    got = p.decode(x, classes=classes).numpy()
    expected = idct(place(x.double().numpy(), mask, classes.numpy()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(CodecError, match="the bases' classes are needed"):
        p.decode(x)
    with pytest.raises(CodecError, match="classes must lie in 0..2"):
        p.decode(x, classes=torch.tensor([0, 1, 2, 3, 0]))
    assert basis_classes([2, 0, 3]).tolist() == [0, 0, 2, 2, 2]


def test_the_golden_archive_decodes_per_class_as_scipy_then_its_hallucinators():
    path = GOLDEN / "frequency-per-class-haba.haba"
    with open_archive(path) as archive:
        manifest, tensors = archive.manifest, archive.tensors()
    mask = tensors["pipeline.0.mask"].numpy()
    assert mask.shape == (3, 1, 3, 3) and len({m.tobytes() for m in mask}) == 3
    classes = basis_classes(manifest["bases"]["per_class"]).numpy()
    images = idct(place(tensors["bases"].double().numpy(), mask, classes))
    # The hallucinators after it are habactl's (their own vectors check them).
    p = Pipeline.from_manifest(manifest["pipeline"], tuple(manifest["bases"]["shape"]))
    p.load_tensors({k: v for k, v in tensors.items() if k.startswith("pipeline.")})
    with torch.no_grad():
        expected = p.stages[1].forward_all(torch.tensor(images, dtype=torch.float32))
    got, labels = HabaDataset(path).tensors()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_a_mask_count_other_than_the_archives_classes_is_refused(tmp_path):
    with open_archive(GOLDEN / "frequency-per-class-haba.haba") as archive:
        fields = {
            k: v for k, v in archive.manifest.items() if k not in ("tensors", "content_digest")
        }
        tensors = {k: v.clone() for k, v in archive.tensors().items()}
    pipeline = [dict(e) for e in fields["pipeline"]]
    pipeline[0] = {**pipeline[0], "configuration": {**pipeline[0]["configuration"], "classes": 2}}
    path = tmp_path / "two.haba"
    two = {**tensors, "pipeline.0.mask": tensors["pipeline.0.mask"][:2].clone()}
    path.write_bytes(forge_archive(two, {**fields, "pipeline": pipeline}))
    with pytest.raises(
        ArchiveError, match="decodes per class for 2 classes, but the archive has 3"
    ):
        open_archive(path)
    # One class's mask keeping one coefficient too many: refused on decoding.
    tensors["pipeline.0.mask"][2, 0, 0, 0] = 1
    path = tmp_path / "five.haba"
    path.write_bytes(forge_archive(tensors, fields))
    with pytest.raises(
        HabaError, match=r"keep exactly 4 coefficients per channel; \[2, 0\] keeps 5"
    ):
        HabaDataset(path).tensors()


def test_the_planner_counts_every_class_mask():
    plan = plan_pipeline([per_class(8, 8, 16, 10)], (1, 8, 8), 10, 1)
    # 2,560 bytes: ten 64-byte masks, then 16 float32 coefficients = 64 bytes a basis.
    assert plan.pipeline_bytes == 640 and plan.basis_bytes == 64
    assert plan.bases == (2560 - 640) // 64 == 30


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    folder = tmp_path_factory.mktemp("per-class")
    out = {}
    for name, extra in {"shared": [], "per-class": ["--frequency-mask", "per-class"]}.items():
        path = folder / f"{name}.haba"
        args = ["compress", "digits", "-o", str(path), "--codec", "idc", "--frequency", "8"]
        result = runner.invoke(app, [*args, "--ipc", "2", *extra, *TINY])
        assert result.exit_code == 0, result.output
        out[name] = path
    return out


def test_compress_per_class_stores_counts_and_decodes_one_mask_per_class(archives):
    with open_archive(archives["per-class"]) as a:
        manifest, tensors = a.manifest, a.tensors()
    assert manifest["pipeline"][0]["configuration"] == {
        "classes": 10,
        "height": 4,
        "keep": 8,
        "mask": "per-class",
        "width": 4,
    }
    mask = tensors["pipeline.0.mask"].numpy()
    assert mask.shape == (10, 1, 4, 4) and (mask.sum((1, 2, 3)) == 8).all()
    assert len({m.tobytes() for m in mask}) > 1  # digits differ in what they keep
    account = storage_account(manifest)
    assert account.parts["hallucinators"].bytes == 160  # ten masks, counted
    assert account.counted_bytes <= account.budget_bytes == 2 * 10 * 64 * 4
    with open_archive(archives["shared"]) as a:
        shared = a.manifest
    # The ten masks cost 144 bytes more than one: 144 // 32 = 4 fewer coefficient bases.
    assert shared["bases"]["count"] - manifest["bases"]["count"] == 4
    images, labels = HabaDataset(archives["per-class"]).tensors()
    classes = basis_classes(manifest["bases"]["per_class"]).numpy()
    small = idct(place(tensors["bases"].double().numpy(), mask, classes))
    p = Pipeline.from_manifest(manifest["pipeline"], tuple(manifest["bases"]["shape"]))
    with torch.no_grad():  # the upsample after it, from its own vectors
        expected = p.stages[1](torch.tensor(small, dtype=torch.float32))
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    assert torch.equal(labels, torch.from_numpy(classes))
    assert runner.invoke(app, ["verify", str(archives["per-class"])]).exit_code == 0


def test_a_shared_mask_is_what_it_always_was(archives, tmp_path, monkeypatch):
    with open_archive(archives["shared"]) as a:
        assert a.manifest["pipeline"][0]["configuration"] == {"height": 4, "keep": 8, "width": 4}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    paths = []
    for name, extra in {"a": [], "b": ["--frequency-mask", "shared"]}.items():
        path = tmp_path / f"{name}.haba"
        args = ["compress", "digits", "-o", str(path), "--codec", "raw", "--frequency", "6"]
        assert runner.invoke(app, [*args, *extra, *TINY]).exit_code == 0
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frequency-mask", "per-class"], "--frequency-mask applies with --frequency only"),
        (["--frequency", "6", "--frequency-mask", "each"], "must be shared or per-class"),
    ],
)
def test_bad_mask_options_are_one_clear_error(tmp_path, args, message):
    out = tmp_path / "x.haba"
    result = runner.invoke(app, ["compress", "digits", "-o", str(out), *args, *TINY])
    assert message in one_error_line(result)
    assert not out.exists()
