"""Images larger than CIFAR's: networks by resolution, budgets and decoding at 64-224 px.

The field's ConvNet is depth 3 at 32 px, 4 at 64 (Tiny ImageNet), 5 at 128 (ImageNet
subsets), 6 at 256, and ResNet-18 at 224 takes torchvision's stem. Networks are checked
at a sixteenth of their width (the same layers, cheap to run); feature sizes at full
width come from construction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.codecs import Pipeline
from habactl.data.base import LabeledImages, make_source
from habactl.distill import DistillConfig, Distiller
from habactl.distill.archive import build_manifest
from habactl.distill.errors import DistillError
from habactl.distill.planner import plan_budget
from habactl.errors import HabaError
from habactl.experts.train import ExpertSettings, train_experts
from habactl.nets import ARCHITECTURES, ConvNet, build_net, seeded
from habactl.nets.registry import arch_name, convnet_depth
from habactl.training.dataset import HabaDataset
from habactl.training.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

SIDES = [64, 128, 224]
NARROW = 1 / 16  # ConvNet: 8 channels; ResNet-18: 4-32


@pytest.mark.parametrize(
    "side, depth",
    [(8, 3), (28, 3), (32, 3), (45, 3), (46, 4), (64, 4), (90, 4), (91, 5), (128, 5)]
    + [(181, 5), (182, 6), (224, 6), (256, 6), (512, 6)],
)
def test_convnet_depth_follows_the_image_size(side, depth):
    assert convnet_depth(side, side) == depth
    assert convnet_depth(side, 1000) == depth  # the smaller side decides


def test_recorded_names_keep_small_images_as_they_were():
    assert [arch_name("convnet", s, s) for s in (8, 28, 32)] == ["convnet"] * 3
    assert [arch_name("convnet", s, s) for s in (64, 128, 224, 256)] == [
        "convnet-d4",
        "convnet-d5",
        "convnet-d6",
        "convnet-d6",
    ]
    # A name given outright is kept: convnet-d3 at 64 px is not the 64 px default.
    assert arch_name("convnet-d3", 64, 64) == "convnet-d3"
    assert arch_name("resnet18", 224, 224) == "resnet18"
    with pytest.raises(HabaError, match="convnet-d6"):
        arch_name("convnet-d9", 64, 64)
    assert {"convnet", "convnet-d3", "convnet-d4", "convnet-d5", "convnet-d6"} <= set(ARCHITECTURES)


def convs(net: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in net.modules())


# (side, arch) -> the side of the last feature map
CONVNET_MAPS = {
    64: {"convnet-d3": 8, "convnet-d4": 4, "convnet-d5": 2, "convnet-d6": 1},
    128: {"convnet-d3": 16, "convnet-d4": 8, "convnet-d5": 4, "convnet-d6": 2},
    224: {"convnet-d3": 28, "convnet-d4": 14, "convnet-d5": 7, "convnet-d6": 3},
}


@pytest.mark.parametrize("side", SIDES)
def test_every_convnet_depth_runs_forward_and_backward(side):
    torch.manual_seed(0)
    for arch, last in CONVNET_MAPS[side].items():
        depth = int(arch[-1])
        net = build_net(arch, 3, side, side, 3, width_mult=NARROW)
        assert isinstance(net, ConvNet) and convs(net) == depth
        x = torch.randn(2, 3, side, side, requires_grad=True)
        maps = net.features(x)
        assert maps.shape == (2, 8, last, last), arch
        logits = net.classifier(maps.flatten(1))
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
        logits.sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert all(p.grad is not None for p in net.parameters())
        # At full width, 128 channels of the same maps.
        assert build_net(arch, 3, side, side, 3).feature_dim == 128 * last * last


@pytest.mark.parametrize("side, depth, features", [(64, 4, 2048), (128, 5, 2048), (224, 6, 1152)])
def test_convnet_takes_the_depth_of_the_resolution(side, depth, features):
    net = build_net("convnet", 3, side, side, 10)
    assert convs(net) == depth and net.feature_dim == features


@pytest.mark.parametrize("side, stem_out, last", [(64, 64, 8), (128, 128, 16), (224, 56, 7)])
def test_resnet18_takes_torchvisions_stem_at_224(side, stem_out, last):
    torch.manual_seed(0)
    net = build_net("resnet18", 3, side, side, 3, width_mult=NARROW)
    assert convs(net) == 20  # stem, 16 in the blocks, 3 shortcut projections
    assert any(isinstance(m, nn.MaxPool2d) for m in net.stem.modules()) == (side == 224)
    assert net.stem[0].kernel_size == ((7, 7) if side == 224 else (3, 3))
    x = torch.randn(1, 3, side, side, requires_grad=True)
    stem = net.stem(x)
    assert stem.shape[-2:] == (stem_out, stem_out)
    maps = net.layers(stem)
    assert maps.shape == (1, 32, last, last)
    net.classifier(net.pool(maps).flatten(1)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert build_net("resnet18", 3, side, side, 3).feature_dim == 512


def test_the_32_px_resnet_keeps_the_reference_stem():
    net = build_net("resnet18", 3, 32, 32, 10)
    assert net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())


# -- budgets and decoding ----------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    "codec, arch, ipc",
    [
        ("raw", "channel-affine", 2),
        ("idc", "channel-affine", 2),
        ("haba", "channel-affine", 2),
        ("haba+idc", "channel-affine", 2),
        ("haba+idc", "pixel-affine", 16),
    ],
)
def test_plan_and_decode_at_large_sizes(side, codec, arch, ipc):
    classes = 2
    plan = plan_budget(codec, (3, side, side), classes, ipc, arch=arch, hallucinators=3)
    assert plan.stored_bytes <= plan.budget_bytes == ipc * classes * 3 * side * side * 4
    per_side = side // 2 if "idc" in codec else side
    assert plan.base_shape == (3, per_side, per_side)
    assert plan.expansion == (3 if "haba" in codec else 1)
    assert min(plan.per_class) >= 1
    pipeline = Pipeline.from_manifest(plan.pipeline, plan.base_shape)
    bases = torch.randn(2, *plan.base_shape, requires_grad=True)  # two bases: cheap
    images = pipeline.decode_all(bases)
    assert images.shape == (2 * plan.expansion, 3, side, side)
    images.square().mean().backward()
    assert torch.isfinite(bases.grad).all() and bases.grad.abs().sum() > 0
    for name, parameter in pipeline.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_haba_at_ipc_1_is_refused_at_224_px_as_at_32():
    # At IPC 1 the raw image alone fills the budget; the hallucinators' parameters do not fit.
    with pytest.raises(DistillError, match="budget too small"):
        plan_budget("haba", (3, 224, 224), 2, 1)


def test_cpu_chunks_hold_as_many_pixels_at_every_size():
    cpu = torch.device("cpu")
    # Unchanged up to 32x32 (the archives of small images are the same bytes).
    assert [seeded.chunk_size(cpu, (1, s, s)) for s in (8, 28, 32)] == [32, 32, 32]
    assert [seeded.chunk_size(cpu, (3, s, s)) for s in (64, 128, 224)] == [8, 2, 1]
    assert seeded.chunk_size(torch.device("meta"), (3, 224, 224)) == 1 << 16


# -- what runs at 64 px records its depth ------------------------------------------------


def test_archives_record_the_network_of_their_resolution(make_archive):
    def recommended(shape):
        manifest = build_manifest(
            source_name="x",
            source_fingerprint="sha256:" + "ab" * 32,
            classes=["a", "b"],
            image_shape=shape,
            bases=torch.zeros(2, *shape),
            labels=torch.tensor([0, 1]),
            pipeline=[],
            normalization={"kind": "none"},
            objective="random",
            hyperparameters={},
            iterations=0,
            seed=0,
            ipc=1,
        )
        return manifest["training"]["recommended"]["arch"]

    assert recommended((1, 28, 28)) == recommended((1, 8, 8)) == "convnet"
    assert recommended((3, 32, 32)) == "convnet"
    assert recommended((3, 64, 64)) == "convnet-d4"
    assert recommended((3, 128, 128)) == "convnet-d5"
    path = make_archive(shape=(3, 64, 64), classes=2, per_class=1)
    recipe = HabaDataset(path).recipe
    assert isinstance(recipe, Recipe) and recipe.arch == "convnet-d4"
    assert "convnet-d4" in "\n".join(recipe.lines())


def source_64(classes: int = 2, per_class: int = 4):
    generator = torch.Generator().manual_seed(0)

    def split(per: int) -> LabeledImages:
        images = torch.rand(classes * per, 3, 64, 64, generator=generator)
        return LabeledImages(images, torch.arange(classes).repeat_interleave(per))

    names = [f"c{k}" for k in range(classes)]
    return make_source("noise-64", names, split(per_class), split(2), is_digits=False)


@pytest.mark.parametrize("objective, arch_key", [("dm", "embed_arch"), ("dc", "net_arch")])
def test_the_engine_builds_and_records_the_64_px_depth(objective, arch_key):
    config = DistillConfig(
        objective=objective,
        codec="haba",
        ipc=2,
        hallucinators=2,
        iterations=0,
        contrastive=True,
        objective_settings={"real_per_class": 2},
        augment="none",
    )
    distiller = Distiller(source_64(), config)
    assert convs(distiller.objective.net) == 4
    assert convs(distiller.contrast.net) == 4
    hyper = distiller.hyperparameters
    assert hyper["objective"][arch_key] == "convnet-d4"
    assert hyper["contrastive"]["arch"] == "convnet-d4"


def test_experts_record_the_depth_the_student_is_built_with(tmp_path):
    settings = ExpertSettings(experts=1, epochs=1, batch_size=8, width=NARROW, device="cpu")
    index = train_experts(source_64(), tmp_path / "experts", settings)
    assert index.arch.name == "convnet-d4"
    small = train_experts(fake_mnist(), tmp_path / "small", settings)
    assert small.arch.name == "convnet"


def fake_mnist():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 28, 28, generator=generator)
    split = LabeledImages(images, torch.tensor([0, 0, 1, 1]))
    return make_source("noise-28", ["a", "b"], split, split, is_digits=True)


def test_compress_and_evaluate_at_64_px_name_the_depth(tmp_path):
    runner = CliRunner()
    rng = np.random.default_rng(0)
    data = tmp_path / "noise64.npz"
    np.savez(
        data,
        x_train=rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8),
        y_train=np.repeat(np.arange(2), 4),
        x_test=rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8),
        y_test=np.repeat(np.arange(2), 2),
    )
    archive = tmp_path / "a.haba"
    done = runner.invoke(
        app, ["compress", str(data), "--objective", "random", "--codec", "raw", "-o", str(archive)]
    )
    assert done.exit_code == 0, done.output
    shown = runner.invoke(app, ["inspect", str(archive)], env={"COLUMNS": "120"})
    assert "convnet-d4" in shown.stdout
    done = runner.invoke(
        app,
        ["evaluate", str(archive), "--data", str(data), "--epochs", "1", "--models", "1"]
        + ["--jobs", "1", "--json", "-q"],
    )
    assert done.exit_code == 0, done.output
    assert list(json.loads(done.stdout)["results"]) == ["convnet-d4"]
