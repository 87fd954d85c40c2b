"""The training recipe: what the manifest records, the transform, the loss, the schedule."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from habactl import HabaDataset
from habactl.training.recipe import DIGIT_DATASETS, DSA_PARAMS, DSA_STRATEGY, Recipe

GOLDEN = Path(__file__).resolve().parent.parent / "format" / "golden" / "v1"


def golden_manifest(name: str) -> dict:
    """The manifest of a golden archive, read with the standard library alone."""
    data = (GOLDEN / f"{name}.haba").read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["haba"])


def with_provenance(manifest: dict, dataset: str, hyperparameters: dict | None = None) -> dict:
    manifest = json.loads(json.dumps(manifest))
    manifest["provenance"]["dataset"]["name"] = dataset
    manifest["provenance"]["hyperparameters"] = hyperparameters or {}
    return manifest


# -- the object ---------------------------------------------------------------------------


def test_raw_golden_gives_the_recorded_protocol():
    recipe = Recipe.from_manifest(golden_manifest("raw"))
    assert (recipe.arch, recipe.epochs, recipe.batch_size) == ("convnet", 1000, 256)
    assert (recipe.lr, recipe.lr_source) == (0.01, "recommended")
    assert (recipe.momentum, recipe.weight_decay) == (0.9, 0.0005)
    assert (recipe.lr_decay_at, recipe.lr_decay, recipe.decay_epoch) == (0.5, 0.1, 500)
    assert recipe.labels == "hard" and recipe.loss_name == "cross-entropy"
    assert recipe.normalization == {"kind": "mean-std", "mean": [0.5], "std": [0.25]}
    assert (recipe.num_classes, recipe.image_shape) == (3, (1, 6, 6))
    assert recipe.dsa is not None and recipe.dsa.per_sample


def test_soft_label_golden_has_its_learned_lr_and_soft_loss():
    recipe = Recipe.from_manifest(golden_manifest("rgb-pixel-affine-soft"))
    assert (recipe.lr, recipe.lr_source) == (0.02, "learned")
    assert recipe.labels == "soft"
    assert "probabilities" in recipe.loss_name
    assert recipe.objective == "mtt"


def test_zca_golden_names_its_whitening():
    recipe = Recipe.from_manifest(golden_manifest("zca"))
    assert recipe.normalization["kind"] == "zca" and recipe.normalization["eps"] == 0.1
    assert any("zca" in line and "eps 0.1" in line for line in recipe.lines())


def test_as_dict_is_json_and_lines_are_an_indented_listing():
    recipe = Recipe.from_manifest(golden_manifest("rgb-pixel-affine-soft"))
    data = json.loads(json.dumps(recipe.as_dict()))
    assert data["lr"] == 0.02 and data["labels"] == "soft"
    assert data["schedule"] == {
        "kind": "step",
        "lr_decay_at": 0.5,
        "lr_decay": 0.1,
        "decay_epoch": 500,
    }
    assert data["augmentation"]["kind"] == "dsa" and data["augmentation"]["flip"] is True
    lines = recipe.lines()
    assert any(line.startswith("optimizer") and "lr 0.02 (learned)" in line for line in lines)
    assert any(line.startswith("  ops") for line in lines)
    assert all(len(line) <= 100 for line in lines)


def test_digits_are_never_flipped():
    raw = golden_manifest("raw")
    for name in ("mnist-5k", "digits", "mnist", "kmnist", "svhn"):
        recipe = Recipe.from_manifest(with_provenance(raw, name))
        assert recipe.dsa is not None and not recipe.dsa.flip and "flip" not in recipe.dsa.ops
        assert "flip" not in recipe.augmentation().augmenter.ops
    assert Recipe.from_manifest(with_provenance(raw, "cifar10")).dsa.flip


def test_the_flip_recorded_by_the_distillation_wins():
    raw = golden_manifest("raw")
    no_flip = {"augmentation": {"strategy": "none", "flip": False, "params": {}}}
    assert not Recipe.from_manifest(with_provenance(raw, "my-folder", no_flip)).dsa.flip


def test_no_recorded_augmentation_means_the_batch_is_left_alone():
    manifest = golden_manifest("raw")
    manifest["training"]["recommended"]["augmentation"] = "none"
    recipe = Recipe.from_manifest(manifest)
    assert recipe.dsa is None and recipe.protocol().augmentation == "none"
    images = torch.rand(4, 1, 6, 6)
    assert torch.equal(recipe.augmentation(seed=1)(images), images)


@pytest.mark.slow
def test_the_recipe_module_is_torch_free():
    code = (
        "import json, sys; from habactl.training.recipe import Recipe; "
        "Recipe.from_manifest(json.loads(sys.stdin.read())).lines(); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(golden_manifest("zca")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_constants_agree_with_the_augmenter_and_the_data_registry():
    from habactl.data.registry import EMBEDDED
    from habactl.data.torchvision_sources import SPECS
    from habactl.training.augment import DEFAULT_PARAMS, DEFAULT_STRATEGY

    assert (DSA_STRATEGY, DSA_PARAMS) == (DEFAULT_STRATEGY, DEFAULT_PARAMS)
    digits = {name for name, spec in SPECS.items() if spec.is_digits}
    digits |= {name for name, load in EMBEDDED.items() if load().is_digits}
    assert digits == DIGIT_DATASETS


def test_the_loader_exposes_the_recipe(make_archive):
    dataset = HabaDataset(make_archive(learned_lr=0.05))
    assert dataset.recipe == Recipe.from_manifest(dataset.manifest)
    assert dataset.recipe.lr == dataset.recommended_lr == 0.05


# -- the same training as `habactl evaluate` ----------------------------------------------


def test_augmentation_is_the_one_evaluate_trains_with():
    from habactl.evaluation.train import make_augment

    for dataset, flip in (("mnist-5k", False), ("cifar10", True)):
        recipe = Recipe.from_manifest(with_provenance(golden_manifest("raw"), dataset))
        theirs = make_augment(recipe.protocol(), flip=flip)
        assert recipe.augmentation().augmenter.to_config() == theirs.to_config()


def test_optimizer_and_schedule_follow_evaluates_lr_epoch_by_epoch():
    from habactl.evaluation.train import train_net

    recipe = Recipe.from_manifest(golden_manifest("rgb-pixel-affine-soft")).with_(epochs=7)
    protocol = recipe.protocol(models=1)
    seen: list[float] = []
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 2))
    train_net(
        net,
        torch.rand(4, 3, 6, 6),
        torch.tensor([0, 1, 0, 1]),
        protocol,
        lr=recipe.lr,
        on_epoch=lambda epoch, opt: seen.append(opt.param_groups[0]["lr"]),
    )
    optimizer = recipe.optimizer(net.parameters())
    scheduler = recipe.scheduler(optimizer)
    mine = []
    for _ in range(recipe.epochs):
        mine.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert mine == pytest.approx(seen) and mine[0] == 0.02 and mine[-1] == pytest.approx(0.002)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 0.0005)


def test_soft_label_loss_against_a_hand_computation():
    from habactl.evaluation.train import loss_of

    recipe = Recipe.from_manifest(golden_manifest("rgb-pixel-affine-soft"))
    logits = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
    probs = [[0.2, 0.5, 0.3], [0.0, 0.1, 0.9]]
    by_hand = 0.0
    for z, p in zip(logits, probs):
        log_norm = math.log(sum(math.exp(v) for v in z))
        by_hand += -sum(pc * (zc - log_norm) for zc, pc in zip(z, p))
    by_hand /= len(logits)
    value = recipe.loss()(torch.tensor(logits), torch.tensor(probs))
    assert float(value) == pytest.approx(by_hand, rel=1e-6)
    assert float(value) == pytest.approx(float(loss_of(torch.tensor(logits), torch.tensor(probs))))
    hard_loss = Recipe.from_manifest(golden_manifest("raw")).loss()
    hard = hard_loss(torch.tensor(logits), torch.tensor([1, 2]))
    z0, z1 = logits
    expected = (
        -((2.0 - math.log(sum(map(math.exp, z0)))) + (3.0 - math.log(sum(map(math.exp, z1))))) / 2
    )
    assert float(hard) == pytest.approx(expected, rel=1e-6)


# -- the transform -------------------------------------------------------------------------


def batch(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def cifar_recipe() -> Recipe:
    return Recipe.from_manifest(with_provenance(golden_manifest("raw"), "cifar10"))


def draws(augment, images: torch.Tensor, calls: int = 6) -> list[torch.Tensor]:
    return [augment(images) for _ in range(calls)]


def test_transform_is_reproducible_from_its_seed_and_changes_with_it():
    images = batch()
    first, again = (
        draws(cifar_recipe().augmentation(seed=3), images),
        draws(cifar_recipe().augmentation(seed=3), images),
    )
    other = draws(cifar_recipe().augmentation(seed=4), images)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not all(torch.equal(a, images) for a in first)


def test_set_epoch_restarts_the_draws_as_a_function_of_the_epoch():
    images = batch()
    augment = cifar_recipe().augmentation(seed=0)
    augment.set_epoch(1)
    epoch1 = draws(augment, images)
    augment.set_epoch(2)
    epoch2 = draws(augment, images)
    augment.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(epoch1, draws(augment, images)))
    assert not all(torch.equal(a, b) for a, b in zip(epoch1, epoch2))


def test_transform_follows_the_batch_dtype_and_leaves_it_alone():
    images = batch().double()
    kept = images.clone()
    out = cifar_recipe().augmentation(seed=0)(images)
    assert out.dtype == torch.float64 and out.device == images.device and out.shape == images.shape
    assert torch.equal(images, kept)
    with pytest.raises(ValueError, match="N, C, H, W"):
        cifar_recipe().augmentation()(images[0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transform_runs_on_the_gpu_with_the_same_draws():
    images = batch()
    on_cpu = draws(cifar_recipe().augmentation(seed=5), images)
    on_gpu = draws(cifar_recipe().augmentation(seed=5), images.cuda())
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def loader_batches(path: Path, *, workers: int, seed: int, epochs: int = 2, sampler=None) -> list:
    dataset = HabaDataset(path)
    augment = dataset.recipe.augmentation(seed=seed)
    torch.manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=4,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=augment.collate,
    )
    out = []
    for epoch in range(epochs):
        augment.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        out.append([(images.clone(), labels.clone()) for images, labels in loader])
    return out


def same(a: list, b: list) -> bool:
    return all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
        for ea, eb in zip(a, b)
        for x, y in zip(ea, eb)
    )


def test_collate_augments_in_the_workers_reproducibly(make_archive):
    path = make_archive(classes=3, per_class=4)
    first = loader_batches(path, workers=2, seed=0)
    assert same(first, loader_batches(path, workers=2, seed=0))
    assert not same(first, loader_batches(path, workers=2, seed=1))
    plain = HabaDataset(path).tensors()[0]
    seen = torch.cat([images for images, _ in first[0]])
    assert seen.shape == plain.shape and not torch.equal(seen.sort(0).values, plain.sort(0).values)


def test_works_with_a_distributed_sampler_and_set_epoch(make_archive):
    path = make_archive(classes=3, per_class=4)
    dataset = HabaDataset(path)

    def run(rank: int) -> list:
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        return loader_batches(path, workers=0, seed=0, sampler=sampler)

    rank0, rank1 = run(0), run(1)
    assert same(rank0, run(0))
    for epoch in range(2):  # the two ranks share the epoch's items between them
        labels = torch.cat([lab for r in (rank0, rank1) for _, lab in r[epoch]])
        assert sorted(labels.tolist()) == sorted(dataset.tensors()[1].tolist())
    assert not same(rank0[:1], rank0[1:])
