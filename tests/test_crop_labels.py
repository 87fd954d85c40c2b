"""Per-crop labels (format 1.4): relabel stores views and their labels, every byte is
counted, training uses the stored crops, and a reader refuses what the spec forbids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from habactl.cli.main import app
from habactl.format import open_archive, save_archive, storage_account
from habactl.labels import encode_soft_labels, labelled_manifest
from helpers import (
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


def toy_teacher(shape=(1, 6, 6), classes=3):
    """A linear teacher on `shape` images: fast, and its label depends on the crop."""
    from habactl.teacher import Teacher, TeacherInfo

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(shape[0] * 36, classes))
    info = TeacherInfo(
        arch="linear", width=1.0, norm="batch",
        classes=tuple(f"class-{i}" for i in range(classes)), image_shape=shape,
        normalization={"kind": "mean-std", "mean": [0.5], "std": [0.25]},
        dataset={"name": "toy", "fingerprint": "sha256:" + "0" * 64}, training={},
    )  # fmt: skip
    return Teacher(net.eval(), info, file_bytes=1, sha256="3" * 64)


def hallucinated_archive(tmp_path: Path, ipc: int = 1000) -> Path:
    """3 classes x 2 bases of 1x6x6 behind 2 hallucinators: 12 training images."""
    manifest = make_manifest(classes=3, per_class=2, shape=(1, 6, 6), pipeline=[
        hallucinate_stage(2)
    ])  # fmt: skip
    tensors = make_tensors(manifest)
    from habactl.codecs import Pipeline

    pipeline = Pipeline.from_manifest(manifest["pipeline"], (1, 6, 6))
    tensors.update({k: v.detach() for k, v in pipeline.named_tensors().items()})
    manifest["storage"]["ipc"] = ipc
    manifest["storage"]["budget_values"] = ipc * 3 * 36
    return save_archive(tmp_path / "h.haba", tensors, manifest)


def test_relabel_stores_each_views_label_and_counts_every_byte(tmp_path):
    from habactl import HabaDataset
    from habactl.labels import relabel

    teacher = toy_teacher()
    result = relabel(
        hallucinated_archive(tmp_path), teacher, tmp_path / "c.haba", form="top-k:2",
        crops=3, seed=5,
    )  # fmt: skip
    dataset = HabaDataset(result.path)
    views = dataset.crop_views()
    assert views is not None and (views.epochs, views.items) == (3, 12)
    with open_archive(result.path) as archive:
        m = archive.manifest
        assert m["format_version"] == "1.4"
        assert m["labels"] == {"kind": "soft", "form": "top-k", "k": 2, "crops": {"epochs": 3}}
        account = storage_account(m)
    # per view: 2 x (2 + 1) bytes of top-k, 8 of box, 1 of flag; per basis 2 x 3 bytes
    labels_bytes = 36 * (6 + 9) + 6 * 6
    assert account.parts["labels"].bytes == result.budget.labels_bytes == labels_bytes
    assert result.budget.crop_views == 36
    # Each stored label is the teacher's, on exactly the stored view (top-2 kept).
    images, _ = dataset.tensors()
    for epoch in range(3):
        every = torch.arange(12)
        seen = views.apply(images, epoch, every) * 0.25 + 0.5  # back to pixels
        probs = teacher.probabilities((seen - 0.5) / 0.25)
        encoded = encode_soft_labels(probs, "top-k:2").tensors
        stored = views.labels[epoch]
        top = encoded["labels.indices"].long()
        torch.testing.assert_close(stored.gather(1, top), encoded["labels"].float())
    # Views differ from the whole image, and so do their labels.
    assert not torch.allclose(views.labels[0], views.labels[1])
    assert not torch.equal(views.box[0], views.box[1])


def test_the_same_seed_gives_the_same_archive(tmp_path):
    from habactl.labels import relabel

    archive, teacher = hallucinated_archive(tmp_path), toy_teacher()
    a = relabel(archive, teacher, tmp_path / "a.haba", form="float16", crops=2, seed=1)
    b = relabel(archive, teacher, tmp_path / "b.haba", form="float16", crops=2, seed=1)
    c = relabel(archive, teacher, tmp_path / "c.haba", form="float16", crops=2, seed=2)
    digest = lambda p: open_archive(p).manifest["content_digest"]  # noqa: E731
    assert digest(a.path) == digest(b.path) != digest(c.path)


def test_per_crop_labels_over_the_budget_are_refused_before_the_teacher_runs(tmp_path):
    archive = hallucinated_archive(tmp_path, ipc=2)
    result = runner.invoke(app, [
        "relabel", str(archive), "--teacher", str(tmp_path / "absent.safetensors"),
        "-o", str(tmp_path / "b.haba"), "--labels", "top-k:1", "--crops", "300",
    ])  # fmt: skip
    line = one_error_line(result)
    assert "b.haba would be over its budget" in line and "fewer --crops epochs" in line
    # 3,600 views of (3 + 9) bytes, 6 rows of 3 bytes
    assert "labels 43,218" in line
    assert not (tmp_path / "b.haba").exists()


def test_training_uses_the_stored_crops_and_their_labels(tmp_path):
    from habactl import HabaDataset
    from habactl.evaluation.protocol import KD
    from habactl.evaluation.train import train_net
    from habactl.labels import relabel

    result = relabel(hallucinated_archive(tmp_path), toy_teacher(), tmp_path / "c.haba", crops=2)
    dataset = HabaDataset(result.path)
    views = dataset.crop_views()
    assert dataset.recipe.crop_epochs == 2 and dataset.recipe.kind == "kd"
    images, labels = dataset.tensors()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(36, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((x.detach().clone(), torch.empty(0)))
            return self.linear(x.flatten(1))

    protocol = KD.with_(epochs=3, batch_size=12)
    generator = torch.Generator().manual_seed(0)
    order = [torch.randperm(12, generator=generator) for _ in range(3)]
    train_net(Spy(), images, labels, protocol, views=views, augment=object())
    assert len(seen) == 3  # one batch per epoch
    for epoch, (batch, _) in enumerate(seen):  # epoch 2 wraps round to stored epoch 0
        want = views.apply(images[order[epoch]], epoch % 2, order[epoch])
        torch.testing.assert_close(batch, want)
    assert torch.equal(views.targets(2, torch.arange(12)), views.targets(0, torch.arange(12)))


@pytest.mark.slow  # two short trainings
def test_evaluate_and_inspect_say_the_archive_trains_on_its_stored_crops(tmp_path):
    from habactl.data.opening import open_data
    from habactl.distill.baselines import BASELINES
    from habactl.labels import relabel
    from helpers import digits_teacher

    teacher = digits_teacher(tmp_path / "t.safetensors", epochs=1)
    archive = BASELINES["random"].make(
        open_data("digits"), tmp_path / "a.haba", ipc=1, seed=0, overwrite=False
    )
    out = relabel(archive, teacher, tmp_path / "c.haba", form="top-k:3", crops=4,
                  allow_over=True).path  # fmt: skip
    shown = runner.invoke(app, ["inspect", str(out), "--json"])
    labels = json.loads(shown.stdout)["labels"]
    # 10 images x 4 epochs of views: 3 x (2 + 1) + 9 bytes each; 10 rows of 9 bytes
    assert labels["crop_epochs"] == 4 and labels["bytes"] == 40 * 18 + 10 * 9
    text = runner.invoke(app, ["inspect", str(out)]).stdout
    assert "per crop (4 epochs of views)" in text and "the stored crops" in text
    args = ["evaluate", str(out), "--epochs", "2", "--models", "1", "--threads", "1"]
    result = runner.invoke(app, [*args, "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["protocol"]["crop_epochs"] == 4 and report["protocol"]["loss"] == "kd"
    standard = json.loads(
        runner.invoke(app, [*args, "--recipe", "standard", "--json", "-q"]).stdout
    )
    assert "crop_epochs" not in standard["protocol"]  # the standard recipe: per-basis labels
    online = runner.invoke(app, [*args, "--teacher", str(teacher.path), "--json", "-q"])
    assert online.exit_code == 0, online.output
    # a teacher online gives every random crop its own target: the stored ones are unused
    assert "crop_epochs" not in json.loads(online.stdout)["protocol"]


# --- the reader ---------------------------------------------------------------------------------


def crop_tensors(rows: int, classes: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(rows, classes, generator=g), dim=1)
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, -0.25, 0.5, 0.5]] * (rows // 2)).half()
    return {
        "labels.crops": probs.half(),
        "labels.crops.box": box,
        "labels.crops.mirror": torch.tensor([0, 1] * (rows // 2), dtype=torch.uint8),
    }


def forged(tmp_path: Path, version="1.4", kind="soft", crops=None, **changes) -> Path:
    """An archive of 6 raw bases with float16 soft labels and 2 epochs of views."""
    manifest = make_manifest(labels="soft")
    encoded = encode_soft_labels(torch.full((6, 3), 1 / 3), "float16")
    m = {**labelled_manifest(manifest, encoded), "format": "haba", "format_version": version}
    m["labels"] = {**m["labels"], "kind": kind, "crops": crops or {"epochs": 2}}
    tensors = {**make_tensors(manifest), **encoded.tensors, **crop_tensors(12)}
    tensors.update(changes)
    path = tmp_path / "forged.haba"
    path.write_bytes(forge_archive(tensors, m))
    return path


def test_a_well_formed_forged_archive_reads(tmp_path):
    with open_archive(forged(tmp_path)) as archive:
        box, mirror, labels = archive.crop_arrays()
    assert box.shape == (12, 4) and mirror.tolist() == [0, 1] * 6 and labels.shape == (12, 3)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        ({"version": "1.3"}, "manifest: labels: unknown field 'crops'"),
        ({"kind": "hard"}, "labels.crops: only soft labels have per-crop labels"),
        ({"crops": {"epochs": 0}}, "labels.crops.epochs: must be at least 1"),
        ({"crops": {"epochs": 2, "seed": 1}}, "labels.crops: unknown field 'seed'"),
        ({"crops": {"epochs": 3}}, "tensor 'labels.crops'"),
        (
            {"labels.crops.box": torch.tensor([[0.5, 0.0, 0.75, 1.0]] * 12).half()},
            "box 0 reaches outside the image",
        ),
        (
            {"labels.crops.box": torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 12).half()},
            "box 0 has a side outside (0, 1]",
        ),
        ({"labels.crops.mirror": torch.full((12,), 2, dtype=torch.uint8)}, "mirror flags"),
        ({"labels.crops": torch.full((12, 3), -0.5).half()}, "soft label values are negative"),
    ],
)
def test_hostile_per_crop_labels_are_refused_with_one_line(tmp_path, edit, fragment):
    fields = {k: v for k, v in edit.items() if k in ("version", "kind", "crops")}
    tensors = {k: v for k, v in edit.items() if k not in fields}
    rejects(forged(tmp_path, **fields, **tensors), fragment, verify_all=True)


def test_verify_and_the_schema_accept_the_1_4_golden():
    result = runner.invoke(app, ["verify", str(GOLDEN / "labels-crops-1.4.haba")])
    assert result.exit_code == 0, result.output
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((GOLDEN.parents[1] / "manifest.schema.json").read_text())
    manifest = open_archive(GOLDEN / "labels-crops-1.4.haba").manifest
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(manifest)
    broken = json.loads(json.dumps(manifest))
    broken["labels"]["kind"] = "hard"
    assert not validator.is_valid(broken)
