"""The knowledge-distillation recipe: its loss, its crop, what the manifest records, the
loader's objects, and the standard recipe of every existing archive left as it was."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import pytest
import torch

from habactl import HabaDataset
from habactl.evaluation.protocol import KD, KD_FAST, STANDARD, Protocol, lr_factor, teacher_entry
from habactl.training.kd import KDLoss, soften
from habactl.training.recipe import CROP_RATIO, DEFAULT_CROP_SCALE, Recipe
from habactl.training.resized_crop import DEFAULT_SCALE, RATIO, ResizedCropFlip
from helpers import rewrite

GOLDEN = Path(__file__).resolve().parent.parent / "format" / "golden" / "v1"
TEACHER = {"name": "digits-teacher.safetensors", "sha256": "ab" * 32, "bytes": 1_199_896}


def golden_manifest(name: str) -> dict:
    data = (GOLDEN / f"{name}.haba").read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["haba"])


def kd_manifest(name: str = "raw", **changes) -> dict:
    manifest = golden_manifest(name)
    manifest["training"]["recommended"] = {**KD.recommended("convnet"), **changes}
    return manifest


def softmax(z: list[float], t: float = 1.0) -> list[float]:
    top = max(v / t for v in z)
    e = [math.exp(v / t - top) for v in z]
    return [v / sum(e) for v in e]


# -- the loss ------------------------------------------------------------------------------

LOGITS = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
PROBS = [[0.2, 0.5, 0.3], [0.05, 0.1, 0.85]]


def double(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def by_hand(logits, probs, t: float) -> float:
    """KL(p_T || softmax(z / T)) · T², batch mean; p_T = softmax(log p / T)."""
    total = 0.0
    for z, p in zip(logits, probs):
        p_t = softmax([math.log(v) for v in p], t)
        q_t = softmax(z, t)
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, q_t))
    return total / len(logits) * t * t


@pytest.mark.parametrize("t", [1.0, 4.0, 20.0])
def test_kd_loss_against_a_hand_computation(t):
    value = KDLoss(t)(double(LOGITS), double(PROBS))
    assert float(value) == pytest.approx(by_hand(LOGITS, PROBS, t), rel=1e-9)


def test_at_temperature_one_it_is_soft_cross_entropy_less_the_entropy():
    logits, probs = double(LOGITS), double(PROBS)
    ce = torch.nn.functional.cross_entropy(logits, probs)
    entropy = -(probs * probs.log()).sum(1).mean()
    assert float(KDLoss(1.0)(logits, probs)) == pytest.approx(float(ce - entropy), rel=1e-9)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_the_gradient_is_t_times_the_softened_difference(t):
    # d/dz [T² KL(p_T || softmax(z/T))] = T (softmax(z/T) - p_T) / N: the T² keeps the step's
    # size as T grows (without it the gradient would shrink by 1/T).
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    probs = torch.tensor(PROBS, dtype=torch.float64)
    KDLoss(t)(logits, probs).backward()
    expected = [
        [
            t * (q - p) / len(LOGITS)
            for q, p in zip(softmax(z, t), softmax([math.log(v) for v in pr], t))
        ]
        for z, pr in zip(LOGITS, PROBS)
    ]
    torch.testing.assert_close(logits.grad, torch.tensor(expected, dtype=torch.float64))


def test_stored_probabilities_softened_are_the_teachers_at_that_temperature():
    teacher_logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    stored = teacher_logits.softmax(1)  # what a relabelled archive stores
    torch.testing.assert_close(soften(stored, 4.0), (teacher_logits / 4).softmax(1))
    loss = KDLoss(4.0)
    student = torch.tensor(LOGITS, dtype=torch.float64)
    assert float(loss(student, stored)) == pytest.approx(
        float(loss.tempered(student, (teacher_logits / 4).softmax(1))), rel=1e-9
    )


def test_class_indices_are_one_hot_targets_and_zeros_stay_zero():
    logits = torch.tensor(LOGITS)
    hard = KDLoss(4.0)(logits, torch.tensor([1, 2]))
    one_hot = KDLoss(4.0)(logits, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert float(hard) == pytest.approx(float(one_hot))
    expected = 16 * -sum(math.log(softmax(z, 4.0)[c]) for z, c in zip(LOGITS, [1, 2])) / 2
    assert float(hard) == pytest.approx(expected, rel=1e-5) and math.isfinite(float(hard))
    with pytest.raises(Exception, match="temperature must be positive"):
        KDLoss(0.0)


# -- the crop ------------------------------------------------------------------------------


def test_the_crop_is_reproducible_per_image_and_keeps_the_shape():
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    crop = ResizedCropFlip(0.08)
    a = crop(images, torch.Generator().manual_seed(1))
    b = crop(images, torch.Generator().manual_seed(1))
    c = crop(images, torch.Generator().manual_seed(2))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, images)
    # Each image is a crop of its own: values stay within the image's range.
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert (CROP_RATIO, DEFAULT_CROP_SCALE) == (RATIO, DEFAULT_SCALE)


def test_the_whole_image_unmirrored_is_the_identity_and_mirrored_its_flip():
    images = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    crop = ResizedCropFlip(1.0)
    params = crop.sample(torch.Generator().manual_seed(0), batch=2)
    params.values.update(
        width=torch.ones(2),
        height=torch.ones(2),
        centre_x=torch.zeros(2),
        centre_y=torch.zeros(2),
        mirror=torch.tensor([0.0, 1.0]),
    )
    out = crop.apply(images, params)
    torch.testing.assert_close(out[0], images[0])
    torch.testing.assert_close(out[1], images[1].flip(2))


def test_digits_are_never_mirrored():
    crop = ResizedCropFlip(0.5, flip=False)
    params = crop.sample(torch.Generator().manual_seed(0), batch=64)
    assert not bool(params.values["mirror"].any()) and crop.ops == ("crop",)
    flipping = ResizedCropFlip(0.5).sample(torch.Generator().manual_seed(0), batch=64)
    assert 0 < float(flipping.values["mirror"].sum()) < 64


# -- the recipe the manifest records -------------------------------------------------------

# The recipes the golden archives have always given (sha256 of their as_dict and lines).
GOLDEN_RECIPES = {
    "frequency-per-class-haba": "388712692e4183aa57c2e6836725ef75",
    "haba-1.2": "ef1ad5712d7b64b8d66674e180f6a1d0",
    "idc-haba": "fd15f1b65c8b69e4f006b81bcc67b97c",
    "labels-crops-1.4": "2fb44b0eac1682b1bb25e0970bacb155",
    "labels-float16-1.3": "4dee4f3a7b2ba98abf48cf201952d92a",
    "labels-top-k-1.3": "fb645e66c15d1560a1f4856c4fb8e25d",
    "labels-uint8-1.3": "be5bef1b4c2e3b9935e763f433dfb600",
    "quantize-bfloat16-idc": "5fc5b9d287d3f96aadba9c76acd7df80",
    "quantize-float16-haba": "7b63915eae1cd7420f4d75ade381d1dd",
    "quantize-frequency-idc": "9877d4c7cd53e7bd159ae1d5f6738852",
    "quantize-uint4-idc": "208016554b05af5802f91070f40cdbc6",
    "raw-1.2": "feac638cbbd47e6390f11907ffd8fe33",
    "raw": "8627af60d538b888a4b8c747ba632f7c",
    "rgb-pixel-affine-soft": "6c4abfb87a520b5b61b3de75d2dac4b0",
    "zca": "90df26654c6041c7d17756a7de70300e",
}


def test_every_golden_archive_is_checked():
    assert {path.stem for path in GOLDEN.glob("*.haba")} == set(GOLDEN_RECIPES)


@pytest.mark.parametrize("name", sorted(GOLDEN_RECIPES))
def test_golden_archives_give_the_standard_recipe_as_before(name):
    recipe = Recipe.from_manifest(golden_manifest(name))
    blob = json.dumps({"dict": recipe.as_dict(), "lines": recipe.lines()}, sort_keys=True)
    assert hashlib.sha256(blob.encode()).hexdigest()[:32] == GOLDEN_RECIPES[name]
    assert recipe.kind == "standard" and recipe.teacher is None and recipe.crop is None
    assert type(recipe.loss()).__name__ == "CrossEntropyLoss"
    assert isinstance(recipe.optimizer([torch.zeros(1, requires_grad=True)]), torch.optim.SGD)
    assert recipe.evaluation_protocol() == STANDARD
    assert recipe.evaluation_protocol(fast=True).epochs == 150


def test_the_standard_recommended_entry_is_unchanged():
    assert STANDARD.recommended("convnet") == golden_manifest("raw-1.2")["training"]["recommended"]


def test_kd_fields_round_trip_through_the_manifest():
    recipe = Recipe.from_manifest(kd_manifest(temperature=8.0, crop_scale=0.5, teacher=TEACHER))
    assert recipe.kind == "kd" and recipe.loss_kind == "kd" and recipe.temperature == 8.0
    assert (recipe.optimizer_name, recipe.schedule) == ("adamw", "cosine")
    assert recipe.crop is not None and recipe.crop.scale == 0.5 and recipe.dsa is None
    assert (recipe.epochs, recipe.batch_size, recipe.lr) == (KD.epochs, KD.batch_size, KD.lr)
    assert recipe.teacher is not None and recipe.teacher.sha256 == TEACHER["sha256"]
    # The protocol it gives records the same entry again.
    protocol = recipe.protocol()
    again = protocol.recommended("convnet", teacher=TEACHER)
    assert again == {
        **KD.recommended("convnet"),
        "temperature": 8.0,
        "crop_scale": 0.5,
        "teacher": TEACHER,
    }
    assert recipe.evaluation_protocol() == protocol
    assert recipe.evaluation_protocol(fast=True).epochs == KD_FAST.epochs


def test_a_kd_recipe_without_its_scale_or_temperature_takes_the_formats_defaults():
    manifest = kd_manifest()
    del manifest["training"]["recommended"]["crop_scale"]
    del manifest["training"]["recommended"]["temperature"]
    recipe = Recipe.from_manifest(manifest)
    assert recipe.crop is not None and recipe.crop.scale == DEFAULT_CROP_SCALE == 0.08
    assert recipe.temperature == 1.0  # format/SPEC.md: the targets as they are
    assert Recipe.from_manifest(kd_manifest()).crop.scale == KD.crop_scale


def test_kd_recipe_builds_its_torch_objects():
    recipe = Recipe.from_manifest(kd_manifest()).with_(epochs=4)
    loss = recipe.loss()
    assert isinstance(loss, KDLoss) and loss.temperature == KD.temperature
    net = torch.nn.Linear(3, 2)
    optimizer = recipe.optimizer(net.parameters())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == KD.weight_decay
    scheduler = recipe.scheduler(optimizer)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    cosine = [KD.lr * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert seen == pytest.approx(cosine) and [recipe.lr_at(e) for e in range(4)] == pytest.approx(
        cosine
    )
    augment = recipe.augmentation(seed=0)
    images = torch.rand(5, 1, 6, 6)
    assert augment(images).shape == images.shape and not torch.equal(augment(images), images)
    assert augment.augmenter.ops == ("crop", "flip")
    digits = kd_manifest()
    digits["provenance"]["dataset"]["name"] = "mnist-5k"
    assert Recipe.from_manifest(digits).augmentation().augmenter.ops == ("crop",)


def test_inspect_lines_name_the_kd_recipe_and_its_teacher():
    lines = Recipe.from_manifest(kd_manifest(teacher=TEACHER, temperature=4)).lines()
    text = "\n".join(lines)
    assert "AdamW, lr 0.001" in text and "cosine" in text and "random resized crop" in text
    assert "temperature 4, times 16" in text and "teacher's outputs" in text
    assert "digits-teacher.safetensors" in text and "1,199,896 bytes" in text
    assert all(len(line) <= 100 for line in lines)
    data = json.loads(json.dumps(Recipe.from_manifest(kd_manifest()).as_dict()))
    assert data["kind"] == "kd" and data["schedule"] == {"kind": "cosine"}
    assert data["augmentation"]["kind"] == "rrc_flip" and data["temperature"] == KD.temperature


def test_forcing_the_other_kind_uses_that_kinds_preset():
    standard = Recipe.from_manifest(golden_manifest("rgb-pixel-affine-soft"))
    forced = standard.as_kind("kd")
    assert forced.kind == "kd" and forced.optimizer_name == "adamw" and forced.lr == KD.lr
    assert forced.labels == "soft" and forced.crop is not None and forced.crop.flip
    assert standard.evaluation_protocol("kd") == KD
    back = forced.as_kind("standard")
    assert back.kind == "standard" and back.dsa is not None and back.lr == STANDARD.lr
    kd = Recipe.from_manifest(kd_manifest())
    assert kd.evaluation_protocol("standard") == STANDARD


def test_protocol_checks_and_schedule():
    with pytest.raises(Exception, match="unknown optimizer"):
        Protocol(optimizer="adam")
    with pytest.raises(Exception, match="temperature must be positive"):
        Protocol(temperature=0)
    assert lr_factor("step", 499, 1000, 500, 0.1) == 1.0
    assert lr_factor("step", 500, 1000, 500, 0.1) == 0.1
    assert lr_factor("cosine", 0, 300, 150, 0.1) == 1.0
    assert lr_factor("cosine", 150, 300, 150, 0.1) == pytest.approx(0.5)

    class Loaded:
        path, sha256, file_bytes = Path("/x/t.safetensors"), "cd" * 32, 7

    assert teacher_entry(Loaded()) == {"name": "t.safetensors", "sha256": "cd" * 32, "bytes": 7}


def test_the_loader_delivers_the_kd_recipe(make_archive):
    path = make_archive(classes=3, per_class=2)
    rewrite(path, lambda m: m["training"].update(recommended=KD.recommended("convnet")))
    dataset = HabaDataset(path)
    assert dataset.recipe.kind == "kd" and isinstance(dataset.recipe.loss(), KDLoss)
    images, labels = dataset.tensors()
    value = dataset.recipe.loss()(torch.zeros(len(labels), 3), labels)
    # Uniform logits against one-hot targets: T² · log 3.
    assert float(value) == pytest.approx(KD.temperature**2 * math.log(3), rel=1e-5)


def test_inspect_shows_the_kd_recipe(make_archive):
    from typer.testing import CliRunner

    import habactl.cli.main  # noqa: F401  (registers the subcommands)
    from habactl.cli.app import app

    path = make_archive(classes=3, per_class=2)
    recommended = KD.recommended("convnet", teacher=TEACHER)
    rewrite(path, lambda m: m["training"].update(recommended=recommended))
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "AdamW, lr 0.001" in text and "random resized crop" in text
    assert "knowledge distillation" in text and "digits-teacher.safetensors" in text


def test_labels_a_teacher_wrote_at_a_temperature_are_brought_to_the_recipes():
    teacher_logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    written = (teacher_logits / 2).softmax(1)  # relabelled with --temperature 2
    student = double(LOGITS)
    loss = KDLoss(4.0, labels_temperature=2.0)
    assert float(loss(student, written)) == pytest.approx(
        float(loss.tempered(student, (teacher_logits / 4).softmax(1))), rel=1e-9
    )
    manifest = kd_manifest("labels-float16-1.3")
    manifest["provenance"]["teacher"] = {
        "name": "t.safetensors",
        "sha256": "ab" * 32,
        "arch": "convnet",
        "temperature": 2.0,
    }
    recipe = Recipe.from_manifest(manifest)
    assert recipe.labels_temperature == 2.0 and recipe.loss().labels_temperature == 2.0
    assert "written at temperature 2" in recipe.loss_name
    assert Recipe.from_manifest(kd_manifest("labels-float16-1.3")).labels_temperature == 1.0
