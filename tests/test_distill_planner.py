"""The budget planner: honest arithmetic in stored values, and clear refusals."""

from __future__ import annotations

import math

import pytest

from habactl.codecs.registry import describe_pipeline
from habactl.distill.errors import DistillError
from habactl.distill.planner import pipeline_for, plan_budget

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def test_raw_and_idc_spend_the_budget_exactly():
    raw = plan_budget("raw", MNIST, 10, 1)
    assert raw.per_class == [1] * 10 and raw.pipeline == [] and raw.stored_values == 7840
    idc = plan_budget("idc", MNIST, 10, 1)
    assert idc.base_shape == (1, 14, 14) and idc.per_class == [4] * 10
    assert idc.stored_values == idc.budget_values == 7840
    assert plan_budget("idc", CIFAR, 10, 10, factor=4).per_class == [160] * 10


def test_hallucinators_are_charged_and_leftover_buys_bases_for_priority_classes():
    plan = plan_budget("haba+idc", MNIST, 10, 1, class_priority=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    # 5 channel-affine hallucinators (1 channel, hidden 3, 3x3) cost 5 x 64 = 320 values;
    # 7840 - 320 = 7520 = 10 x 3 x 196 + 1640: eight more bases, for the first 8 classes listed.
    assert plan.pipeline_values == 320
    assert plan.per_class == [3, 3, 4, 4, 4, 4, 4, 4, 4, 4]
    assert plan.extra_classes == [2, 3, 4, 5, 6, 7, 8, 9]
    assert plan.stored_values == 38 * 196 + 320 == 7768 <= plan.budget_values
    assert plan.unspent_values == 72 < 196
    assert plan.images == 38 * 5
    equal = plan_budget("haba+idc", MNIST, 10, 1, leftover="none")
    assert equal.per_class == [3] * 10 and equal.unspent_values == 7840 - 30 * 196 - 320


def test_pipeline_values_agree_with_the_codec_registry():
    for arch in ("channel-affine", "pixel-affine"):
        for codec in ("haba", "haba+idc"):
            stages, base_shape = pipeline_for(codec, CIFAR, hallucinators=4, arch=arch)
            spec = describe_pipeline(stages, base_shape)
            plan = plan_budget(codec, CIFAR, 10, 10, hallucinators=4, arch=arch)
            total = sum(math.prod(s) for s in spec.params.values())
            assert plan.pipeline_values == total


def test_counting_bases_only_reproduces_the_reference_claim():
    plan = plan_budget("haba+idc", MNIST, 10, 1, counts="bases")
    assert plan.per_class == [4] * 10  # hallucinators ride free
    assert plan.charged_values == 7840 and plan.stored_values == 7840 + 320
    # The reference CIFAR-10 setting: 1 basis of 3x32x32 per class, 5 pixel-affine hallucinators.
    ref = plan_budget("haba", CIFAR, 10, 1, counts="bases", arch="pixel-affine")
    assert ref.per_class == [1] * 10
    assert ref.pipeline_values == 5 * 5568 == 27840  # docs/method.md, "HaBa"
    assert ref.stored_values / ref.budget_values == pytest.approx(1.906, abs=1e-3)


def test_refuses_when_not_one_basis_per_class_fits():
    with pytest.raises(DistillError, match="budget too small.*8,160.*raise --ipc"):
        plan_budget("haba", MNIST, 10, 1)
    with pytest.raises(DistillError, match="budget too small"):
        plan_budget("haba", CIFAR, 10, 1, arch="pixel-affine")
    assert plan_budget("haba", MNIST, 10, 2).per_class[0] >= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(codec="idc", factor=3), "does not divide"),
        (dict(codec="raw", factor=2), "applies to the idc"),
        (dict(codec="jpeg"), "unknown codec"),
        (dict(codec="haba", arch="mlp"), "unknown hallucinator architecture"),
        (dict(codec="raw", counts="some"), "unknown budget counting"),
        (dict(codec="raw", leftover="hallucinators"), "unknown leftover"),
        (dict(codec="haba+idc", kernel=4), "odd"),
    ],
)
def test_bad_choices_are_one_clear_error(kwargs, message):
    codec = kwargs.pop("codec")
    with pytest.raises(DistillError, match=message):
        plan_budget(codec, MNIST, 10, 4, **kwargs)
