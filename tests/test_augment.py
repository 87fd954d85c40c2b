"""Differentiable Siamese augmentation: shared parameters, every op, gradients, seeds."""

from __future__ import annotations

import pytest
import torch

from habactl.errors import HabaError
from habactl.training.augment import OPS, AugmentParams, SiameseAugment

# Hand-made values that move every op away from the identity.
FIXED = {
    "color": {"brightness": [0.3], "saturation": [1.7], "contrast": [1.2]},
    "crop": {"shift_y": [0.0], "shift_x": [0.95]},
    "cutout": {"center_y": [0.4], "center_x": [0.6]},
    "flip": {"flip": [1.0]},
    "scale": {"sx": [1.15], "sy": [0.85]},
    "rotate": {"angle": [0.2]},
}


def fixed(op: str) -> AugmentParams:
    return AugmentParams(op, {k: torch.tensor(v) for k, v in FIXED[op].items()})


def images(n: int, shape=(3, 16, 16), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("op", OPS)
def test_same_params_transform_batches_of_any_size_identically(op):
    aug = SiameseAugment(op)
    real, syn = images(7), images(2, seed=1)
    syn[0] = real[0]
    params = aug.sample(torch.Generator().manual_seed(5))
    assert params.op == op and params.batch is None
    out_real, out_syn = aug.apply(real, params), aug.apply(syn, params)
    assert torch.allclose(out_real[0], out_syn[0], atol=1e-6)


@pytest.mark.parametrize("op", OPS)
def test_each_op_changes_the_image_keeps_the_shape_and_passes_gradients(op):
    aug = SiameseAugment()
    for shape in [(1, 8, 8), (3, 7, 9)]:
        x = images(4, shape).requires_grad_()
        y = aug.apply(x, fixed(op))
        assert y.shape == x.shape
        assert not torch.allclose(y, x)
        weights = torch.rand_like(y)
        (grad,) = torch.autograd.grad((y * weights).sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert x.grad is None  # the input itself is untouched


def test_deterministic_under_a_seeded_generator():
    aug, x = SiameseAugment(), images(5)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(123)
        runs.append(
            [aug(x, g) for _ in range(12)] + [aug(x, g, per_sample=True) for _ in range(12)]
        )
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_no_global_rng_use():
    aug, g = SiameseAugment(), torch.Generator().manual_seed(0)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    aug(images(3), g, per_sample=True)
    aug(images(3), g)
    assert torch.equal(torch.get_rng_state(), before)


def test_flip_never_chosen_without_flip():
    g = torch.Generator().manual_seed(0)
    no_flip = {SiameseAugment(flip=False).sample(g).op for _ in range(300)}
    assert no_flip == set(OPS) - {"flip"}
    assert {SiameseAugment().sample(g).op for _ in range(300)} == set(OPS)


@pytest.mark.parametrize("op", [o for o in OPS if o != "flip"])
def test_per_sample_mode_gives_each_image_its_own_transform(op):
    aug = SiameseAugment(op)
    x = images(1, (3, 32, 32)).expand(8, -1, -1, -1)
    params = aug.sample(torch.Generator().manual_seed(1), batch=8)
    assert params.batch == 8 and all(v.shape == (8,) for v in params.values.values())
    y = aug.apply(x, params)
    assert len({tuple(y[i].flatten()[:2000].tolist()) for i in range(8)}) > 1


def test_per_sample_flip_flips_some_and_not_others():
    x = images(1, (1, 8, 8)).expand(64, -1, -1, -1)
    y = SiameseAugment("flip").apply(
        x, SiameseAugment("flip").sample(torch.Generator().manual_seed(0), 64)
    )
    flipped = torch.tensor([torch.equal(y[i], x[0].flip(2)) for i in range(64)])
    kept = torch.tensor([torch.equal(y[i], x[0]) for i in range(64)])
    assert flipped.any() and kept.any() and (flipped | kept).all()


def test_per_sample_crop_agrees_with_shared_crop():
    aug, x = SiameseAugment("crop"), images(3)
    for u in (0.0, 0.3, 0.99):
        shared = AugmentParams(
            "crop", {"shift_y": torch.tensor([u]), "shift_x": torch.tensor([1 - u])}
        )
        each = AugmentParams(
            "crop", {"shift_y": torch.full((3,), u), "shift_x": torch.full((3,), 1 - u)}, 3
        )
        assert torch.equal(aug.apply(x, shared), aug.apply(x, each))


def test_crop_and_cutout_geometry():
    x = torch.ones(1, 1, 16, 16)
    # crop_pad 0.125 of 16 -> shifts in [-2, 2]; u = 0 is the extreme -2: two zero rows.
    shifted = SiameseAugment().apply(
        x, AugmentParams("crop", {"shift_y": torch.tensor([0.0]), "shift_x": torch.tensor([0.5])})
    )
    assert shifted[0, 0, -2:].abs().sum() == 0 and shifted[0, 0, :-2].min() == 1
    # cutout 0.5 of 16: an 8x8 hole when it fits inside the image.
    holed = SiameseAugment().apply(
        x,
        AugmentParams("cutout", {"center_y": torch.tensor([0.5]), "center_x": torch.tensor([0.5])}),
    )
    assert (holed == 0).sum() == 64


def test_per_sample_params_must_match_the_batch():
    aug = SiameseAugment()
    params = aug.sample(torch.Generator().manual_seed(0), batch=4)
    with pytest.raises(ValueError):
        aug.apply(images(3), params)


def test_config_round_trip_and_bad_input():
    aug = SiameseAugment("crop_scale", flip=False, rotate=10)
    config = aug.to_config()
    assert config["params"]["rotate"] == 10.0 and config["flip"] is False
    again = SiameseAugment.from_config(config)
    assert again.to_config() == config and again.ops == ("crop", "scale")
    assert (
        SiameseAugment("none")
        .apply(images(2), SiameseAugment("none").sample(torch.Generator()))
        .shape[0]
        == 2
    )
    with pytest.raises(HabaError, match="zoom"):
        SiameseAugment("crop_zoom")
    with pytest.raises(HabaError, match="blur"):
        SiameseAugment(blur=1.0)
    with pytest.raises(HabaError):
        SiameseAugment(flip_prob=2.0)
