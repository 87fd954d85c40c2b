"""Soft-label storage forms (format 1.3): round trips within the spec's bounds, the
account and inspect, hostile label tensors, and `habactl relabel` with a tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from habactl.cli.main import app
from habactl.format import ArchiveError, open_archive, save_archive, storage_account
from habactl.labels import LabelsError, encode_soft_labels, labelled_manifest
from helpers import (
    digits_teacher,
    forge_archive,
    hallucinate_stage,
    make_manifest,
    make_tensors,
    one_error_line,
    rejects,
)

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
GOLDEN = Path(__file__).resolve().parent.parent / "format" / "golden" / "v1"


def probability_rows(count: int, classes: int, seed: int = 0, temperature: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(count, classes, generator=g) * 3 / temperature, dim=1)


def soft_archive(tmp_path: Path, form: str, classes: int = 10, per_class: int = 2, **teacher):
    """A raw archive whose soft labels are random probability rows stored in `form`."""
    manifest = make_manifest(classes=classes, per_class=per_class, labels="soft")
    tensors = make_tensors(manifest)
    probs = probability_rows(classes * per_class, classes)
    encoded = encode_soft_labels(probs, form)
    tensors.update(encoded.tensors)
    m = labelled_manifest(manifest, encoded, teacher=teacher or None)
    path = save_archive(tmp_path / f"{form.replace(':', '-')}.haba", tensors, m)
    return path, probs


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [10, 300])
def test_every_form_decodes_within_the_spec_bound(tmp_path, classes):
    for form in ("float32", "float16", "uint8", "top-k:4"):
        path, probs = soft_archive(tmp_path, form, classes=classes)
        with open_archive(path) as archive:
            decoded = archive.labels()
            version = archive.manifest["format_version"]
        assert decoded.dtype == torch.float32 and decoded.shape == probs.shape
        error = (decoded - probs).abs()
        if form == "float32":
            assert version == "1.2" and torch.equal(decoded, probs)
        elif form == "float16":
            assert version == "1.3"
            assert bool((error <= probs * 2**-11 + 2**-25).all())
        elif form == "uint8":
            largest = probs.amax(dim=1, keepdim=True)
            assert bool((error <= largest / 510 + largest * 2**-22).all())
        else:
            k = 4
            ordered = probs.sort(dim=1, descending=True).values
            kept, next_largest = ordered[:, :k], ordered[:, k : k + 1]
            top = decoded.sort(dim=1, descending=True).values[:, :k]
            assert bool(((top - kept).abs() <= kept * 2**-11 + 2**-25).all())
            assert bool((error <= next_largest + k * 2**-12 + 2**-20).all())
            torch.testing.assert_close(decoded.sum(dim=1), torch.ones(len(probs)))


def test_top_k_indices_take_the_smallest_unsigned_type_that_holds_the_classes():
    for classes, dtype in ((256, torch.uint8), (257, torch.uint16), (70_000, torch.uint32)):
        encoded = encode_soft_labels(probability_rows(2, classes), "top-k:2")
        assert encoded.tensors["labels.indices"].dtype == dtype
        assert encoded.nbytes == 2 * 2 * (2 + dtype.itemsize)


@pytest.mark.parametrize("form", ["float32", "float16", "uint8", "top-k:1", "top-k:7"])
def test_a_forms_row_bytes_are_what_it_stores(form):
    from habactl.format.labels import parse_form

    for classes in (7, 300):
        encoded = encode_soft_labels(probability_rows(5, classes), form)
        assert encoded.nbytes == 5 * parse_form(form).row_bytes(classes)


def test_a_float32_form_without_a_teacher_is_the_1_2_archive_of_before(tmp_path):
    manifest = make_manifest(labels="soft")
    tensors = make_tensors(manifest)
    before = save_archive(tmp_path / "before.haba", tensors, manifest).read_bytes()
    encoded = encode_soft_labels(tensors["labels"], "float32")
    after = save_archive(
        tmp_path / "after.haba",
        {**tensors, **encoded.tensors},
        labelled_manifest(manifest, encoded),
    )
    assert after.read_bytes() == before


def test_the_loader_trains_on_decoded_rows(tmp_path):
    from habactl import HabaDataset

    path, probs = soft_archive(tmp_path, "uint8")
    images, labels = HabaDataset(path).tensors()
    assert labels.dtype == torch.float32 and labels.shape == probs.shape
    assert torch.equal(labels, open_archive(path).labels())


@pytest.mark.parametrize(
    ("probs", "form", "fragment"),
    [
        (torch.full((2, 3), 0.5), "top-k:2", "row 0 sums to 1.5: use float16 or uint8"),
        (torch.full((2, 3), 1 / 3), "top-k:4", "k is 4, but the labels have 3 classes"),
        (torch.tensor([[float("nan"), 1.0]]), "float16", "NaN or infinite"),
        (torch.tensor([[-0.1, 1.1]]), "uint8", "negative values"),
        (torch.tensor([[1e5, 1.0]]), "float16", "do not fit float16"),
        (torch.ones(3), "float16", "must be a (count, classes) tensor"),
        (torch.ones(2, 2) / 2, "top-k:0", "is not one of float32, float16, uint8, top-k:K"),
        (torch.ones(2, 2) / 2, "int4", "is not one of"),
    ],
)
def test_labels_a_form_cannot_store_are_refused_with_one_line(probs, form, fragment):
    with pytest.raises(LabelsError) as info:
        encode_soft_labels(probs, form)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# --- manifest and account --------------------------------------------------------------------


def test_the_account_counts_every_tensor_of_the_form(tmp_path):
    path, _ = soft_archive(tmp_path, "uint8")
    account = storage_account(open_archive(path).manifest)
    labels = account.parts["labels"]
    assert labels.counted and labels.values == 20 * 10 + 20 and labels.bytes == 20 * 10 + 20 * 4
    assert account.images_bytes == account.parts["bases"].bytes == 20 * 16 * 4
    assert account.labels_to_images == pytest.approx(280 / 1280)


def test_inspect_shows_the_form_and_the_labels_bytes_beside_the_images(tmp_path):
    path, _ = soft_archive(tmp_path, "top-k:3")
    result = runner.invoke(app, ["inspect", str(path)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "soft, top-3 as float16 (the rest spread evenly)" in result.stdout
    # 20 rows x 3 x (2 + 1) bytes = 180 B against 20 bases x 16 x 4 = 1,280 B
    assert "labels 180 B (0.14× the images, 1.3 KB; counted)" in result.stdout
    data = json.loads(runner.invoke(app, ["inspect", str(path), "--json"]).stdout)
    assert data["labels"] == {
        "kind": "soft",
        "form": "top-k",
        "k": 3,
        "crop_epochs": None,
        "bytes": 180,
        "counted": True,
        "images_bytes": 1280,
        "to_images": 180 / 1280,
        "teacher": None,
    }


def test_inspect_of_a_hard_archive_says_its_labels_are_not_counted():
    result = runner.invoke(app, ["inspect", str(GOLDEN / "raw.haba")], env={"COLUMNS": "100"})
    assert "not counted: hard labels are implied" in result.stdout


@pytest.mark.parametrize("name", ["labels-float16-1.3", "labels-uint8-1.3", "labels-top-k-1.3"])
def test_verify_passes_on_the_1_3_goldens(name):
    result = runner.invoke(app, ["verify", str(GOLDEN / f"{name}.haba")])
    assert result.exit_code == 0, result.output
    with open_archive(GOLDEN / f"{name}.haba") as archive:
        assert archive.manifest["format_version"] == "1.3" and archive.manifest_checked


def test_a_form_is_refused_in_a_1_2_manifest(tmp_path):
    manifest = {**make_manifest(labels="soft"), "format": "haba", "format_version": "1.2"}
    encoded = encode_soft_labels(probability_rows(6, 3), "float16")
    tensors = {**make_tensors(manifest), **encoded.tensors}
    path = tmp_path / "old.haba"
    path.write_bytes(forge_archive(tensors, {**manifest, "labels": encoded.entry}))
    rejects(path, "manifest: labels: unknown field 'form'")


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ({"kind": "hard", "form": "float16"}, "labels.form: only soft labels have a form"),
        ({"kind": "soft", "form": "top-k"}, "labels.k: missing"),
        ({"kind": "soft", "form": "uint8", "k": 2}, "labels.k: only a top-k form has k"),
        ({"kind": "soft", "form": "top-k", "k": 4}, "labels.k: 4 is out of range (1 to 3"),
        ({"kind": "soft", "form": "bfloat16"}, "labels.form: 'bfloat16' is not one of"),
    ],
)
def test_bad_label_fields_are_refused(tmp_path, labels, fragment):
    manifest = {**make_manifest(labels="soft"), "format": "haba", "format_version": "1.3"}
    path = tmp_path / "bad.haba"
    path.write_bytes(forge_archive(make_tensors(manifest), {**manifest, "labels": labels}))
    rejects(path, fragment)


def _forged_top_k(tmp_path: Path, values: torch.Tensor, indices: torch.Tensor) -> Path:
    manifest = {**make_manifest(labels="soft"), "format": "haba", "format_version": "1.3"}
    manifest["labels"] = {"kind": "soft", "form": "top-k", "k": 2}
    tensors = {"bases": make_tensors(manifest)["bases"], "labels": values}
    tensors["labels.indices"] = indices
    path = tmp_path / "hostile.haba"
    path.write_bytes(forge_archive(tensors, manifest))
    return path


GOOD_VALUES = torch.full((6, 2), 0.25).half()
GOOD_INDICES = torch.tensor([[0, 1]] * 6, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("values", "indices", "fragment"),
    [
        (
            GOOD_VALUES,
            torch.tensor([[0, 1]] * 5 + [[2, 3]], dtype=torch.uint8),
            "tensor 'labels.indices': class index 3 at [5, 1] is out of range (0 to 2)",
        ),
        (
            GOOD_VALUES,
            torch.tensor([[0, 1]] * 3 + [[2, 2]] * 3, dtype=torch.uint8),
            "tensor 'labels.indices': row 3 names class 2 twice",
        ),
        (
            torch.tensor([[0.5, float("nan")]] * 6).half(),
            GOOD_INDICES,
            "tensor 'labels': 6 values are NaN or infinite",
        ),
        (
            torch.tensor([[0.5, -0.25]] * 6).half(),
            GOOD_INDICES,
            "tensor 'labels': 6 soft label values are negative",
        ),
        (
            GOOD_VALUES,
            GOOD_INDICES.to(torch.uint16),
            "tensor 'labels.indices': is U16 [6, 2], the manifest implies U8 [6, 2]",
        ),
        (
            GOOD_VALUES.float(),
            GOOD_INDICES,
            "tensor 'labels': is F32 [6, 2], the manifest implies F16 [6, 2]",
        ),
        (
            torch.full((6, 3), 0.25).half(),
            GOOD_INDICES,
            "tensor 'labels': is F16 [6, 3], the manifest implies F16 [6, 2]",
        ),
    ],
)
def test_hostile_label_tensors_are_refused_with_one_line(tmp_path, values, indices, fragment):
    path = _forged_top_k(tmp_path, values, indices)
    rejects(path, fragment, verify_all=True)
    result = runner.invoke(app, ["verify", str(path)])
    assert result.exit_code == 1 and fragment in result.output


def test_a_negative_uint8_scale_is_refused(tmp_path):
    manifest = {**make_manifest(labels="soft"), "format": "haba", "format_version": "1.3"}
    manifest["labels"] = {"kind": "soft", "form": "uint8"}
    tensors = {
        "bases": make_tensors(manifest)["bases"],
        "labels": torch.full((6, 3), 7, dtype=torch.uint8),
        "labels.scale": torch.tensor([0.1, 0.1, -0.1, 0.1, 0.1, 0.1]),
    }
    path = tmp_path / "scale.haba"
    path.write_bytes(forge_archive(tensors, manifest))
    rejects(path, "tensor 'labels.scale': 1 scales are negative", verify_all=True)


def test_the_writer_refuses_what_the_reader_refuses(tmp_path):
    manifest = make_manifest(labels="soft")
    encoded = encode_soft_labels(probability_rows(6, 3), "top-k:2")
    tensors = {**make_tensors(manifest), **encoded.tensors}
    tensors["labels.indices"] = torch.tensor([[0, 5]] * 6, dtype=torch.uint8)
    with pytest.raises(ArchiveError, match="class index 5 at \\[0, 1\\] is out of range"):
        save_archive(tmp_path / "w.haba", tensors, labelled_manifest(manifest, encoded))


# --- relabel ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "digits.safetensors"
    return digits_teacher(path, epochs=1)


@pytest.fixture(scope="module")
def digits_archive(tmp_path_factory):
    """The digits archive compress's random baseline makes at IPC 2 (hard labels)."""
    from habactl.data.opening import open_data
    from habactl.distill.baselines import BASELINES

    path = tmp_path_factory.mktemp("archive") / "digits.haba"
    return BASELINES["random"].make(open_data("digits"), path, ipc=2, seed=0, overwrite=False)


@pytest.mark.slow  # trains a teacher (once per module)
def test_relabel_stores_the_teachers_probabilities_and_names_the_teacher(
    tmp_path, teacher, digits_archive
):
    from habactl import HabaDataset
    from habactl.labels import relabel

    result = relabel(
        digits_archive, teacher, tmp_path / "b.haba", form="float16", temperature=4.0,
        allow_over=True,
    )  # fmt: skip
    images, _ = HabaDataset(digits_archive).tensors()
    expected = teacher.probabilities(images, temperature=4.0)  # same normalisation
    with open_archive(result.path) as new, open_archive(digits_archive) as old:
        assert new.manifest["format_version"] == "1.3"
        assert new.manifest["labels"] == {"kind": "soft", "form": "float16"}
        assert new.manifest["provenance"]["teacher"] == {
            "name": "digits.safetensors",
            "sha256": teacher.sha256,
            "arch": teacher.arch,
            "temperature": 4.0,
        }
        assert torch.equal(new.tensor("bases"), old.tensor("bases"))
        assert new.manifest["pipeline"] == old.manifest["pipeline"]
        torch.testing.assert_close(new.labels(), expected, atol=2**-11, rtol=2**-10)
        counted = storage_account(new.manifest).counted_bytes
    # 20 bases of 1x8x8 float32 and 20 rows of 10 float16 values
    assert result.budget.counted_bytes == counted == 20 * 64 * 4 + 20 * 10 * 2
    assert result.budget.over and result.budget.budget_bytes == 20 * 64 * 4
    # the archive now trains with the knowledge-distillation recipe
    assert HabaDataset(result.path).recipe.kind == "kd"
    assert HabaDataset(digits_archive).recipe.kind == "standard"


def test_relabel_averages_a_bases_images_and_maps_the_normalisation(tmp_path):
    from habactl import HabaDataset
    from habactl.labels import relabel
    from habactl.teacher import Teacher, TeacherInfo

    manifest = make_manifest(classes=2, per_class=2, shape=(1, 3, 3), pipeline=[
        hallucinate_stage(3)
    ])  # fmt: skip
    tensors = make_tensors(manifest)
    from habactl.codecs import Pipeline

    pipeline = Pipeline.from_manifest(manifest["pipeline"], (1, 3, 3))
    tensors.update({k: v.detach() for k, v in pipeline.named_tensors().items()})
    manifest["storage"]["ipc"] = 30  # room for the hallucinators and the labels
    manifest["storage"]["budget_values"] = 30 * 2 * 9
    archive = save_archive(tmp_path / "h.haba", tensors, manifest)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 2)).eval()
    info = TeacherInfo(
        arch="linear", width=1.0, norm="batch", classes=("class-0", "class-1"),
        image_shape=(1, 3, 3), normalization={"kind": "mean-std", "mean": [0.4], "std": [0.5]},
        dataset={"name": "toy", "fingerprint": "sha256:" + "0" * 64}, training={},
    )  # fmt: skip
    model = Teacher(net, info, file_bytes=1, sha256="2" * 64)
    result = relabel(archive, model, tmp_path / "r.haba", form="float32")
    images, _ = HabaDataset(archive).tensors()  # 4 bases x 3 variants, item b*3 + v
    pixels = images * 0.25 + 0.5  # the archive's mean-std
    with torch.no_grad():
        probs = torch.softmax(net((pixels - 0.4) / 0.5), dim=1).view(4, 3, 2).mean(dim=1)
    torch.testing.assert_close(open_archive(result.path).labels(), probs)
    assert not result.budget.over


@pytest.fixture
def small_archive(tmp_path):
    """20 bases of 1x8x8 (10 classes, IPC 2) with hard labels: 5,120 bytes, its budget."""
    manifest = make_manifest(classes=10, per_class=2, shape=(1, 8, 8))
    return save_archive(tmp_path / "small.haba", make_tensors(manifest), manifest)


def test_relabel_refuses_over_budget_before_running_the_teacher(tmp_path, small_archive):
    result = runner.invoke(
        app,
        ["relabel", str(small_archive), "--teacher", str(tmp_path / "absent.safetensors"),
         "-o", str(tmp_path / "b.haba")],
    )  # fmt: skip
    line = one_error_line(result)
    assert line == (
        "habactl: error: b.haba would be over its budget: 5,920 bytes counted (labels 800, "
        "0.16x the images' 5,120) of a budget of 5,120 (IPC 2): 1.16x; pass --allow-over to "
        "write it anyway, or store the labels smaller (--labels uint8 or top-k:K)"
    )
    assert not (tmp_path / "b.haba").exists()


@pytest.mark.slow
def test_relabel_cli_writes_top_k_and_prints_the_new_total(tmp_path, teacher, digits_archive):
    out = tmp_path / "k.haba"
    args = ["relabel", str(digits_archive), "--teacher", str(teacher.path), "-o", str(out)]
    result = runner.invoke(app, [*args, "--labels", "top-k:2", "--allow-over", "--threads", "1"])
    assert result.exit_code == 0, result.output
    # 20 rows x 2 x (2 + 1) bytes of labels beside 5,120 bytes of bases
    assert "5,240 bytes counted (labels 120, 0.02x the images' 5,120)" in result.stderr
    assert open_archive(out).manifest["labels"] == {"kind": "soft", "form": "top-k", "k": 2}
    again = runner.invoke(app, [*args, "--labels", "uint8"])
    assert one_error_line(again) == f"habactl: error: {out} exists; pass --force to replace it"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--labels", "top-k:11"], "top-k: k is 11, but the archive has 10 classes"),
        (["--labels", "int4"], "labels form 'int4' is not one of"),
        (["--temperature", "0"], "--temperature must be a positive number"),
    ],
)
def test_relabel_refuses_bad_options_with_one_line(tmp_path, small_archive, extra, fragment):
    # Refused before the teacher file is read: this one does not exist.
    args = ["relabel", str(small_archive), "--teacher", str(tmp_path / "absent.safetensors")]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "x.haba"), *extra])
    assert fragment in one_error_line(result)


@pytest.mark.slow
def test_relabel_refuses_a_teacher_of_other_classes(tmp_path, teacher):
    manifest = make_manifest(classes=3, shape=(1, 8, 8))
    archive = save_archive(tmp_path / "three.haba", make_tensors(manifest), manifest)
    result = runner.invoke(
        app, ["relabel", str(archive), "--teacher", str(teacher.path), "-o",
              str(tmp_path / "y.haba"), "--allow-over"],
    )  # fmt: skip
    assert one_error_line(result) == (
        "habactl: error: digits.safetensors knows 10 classes; the archive has 3 "
        "(class-0, class-1, class-2, ...)"
    )
