"""Decode stages: configuration checks, shapes, counts, and vectorised == sequential."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from habactl.codecs import STAGES, CodecError, Pipeline, describe_pipeline, get_stage
from habactl.errors import HabaError
from stage_contract import StageContract

HALLUCINATE = {"arch": "pixel-affine", "count": 2, "hidden": 3, "kernel": 3}


def entry(name: str, **configuration) -> dict:
    return {"name": name, "version": 1, "configuration": configuration}


def randomised(stage, seed: int = 0):
    """The stage with every parameter moved off its initialisation (scale too)."""
    stage.init_noise(0.3, torch.Generator().manual_seed(seed))
    return stage


def sequential(stage, x: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
    """Reference: one sample at a time, one hallucinator at a time, plain convs."""
    t = {k: v.detach() for k, v in stage.named_tensors().items()}
    out = []
    for n in range(x.shape[0]):
        v = int(variant[n])
        z = F.conv2d(x[n : n + 1], t["encoder.weight"][v], t["encoder.bias"][v])
        z = z * t["scale"][v] + t["shift"][v]
        out.append(F.conv_transpose2d(z, t["decoder.weight"][v], t["decoder.bias"][v]))
    return torch.cat(out)


# -- configuration -------------------------------------------------------------------
def test_registry_names():
    assert set(STAGES) == {"upsample", "hallucinate", "quantize", "frequency"}
    assert get_stage("hallucinate").version == 1
    with pytest.raises(CodecError, match="unknown stage 'nope'"):
        get_stage("nope")
    assert issubclass(CodecError, HabaError)


@pytest.mark.parametrize(
    "name, configuration, shape",
    [
        ("upsample", {"factor": 2}, (1, 14, 14)),
        ("upsample", {"factor": 3, "mode": "bicubic", "x-note": {"a": 1}}, (3, 5, 7)),
        ("hallucinate", {"arch": "channel-affine", "count": 5}, (1, 28, 28)),
        ("hallucinate", HALLUCINATE, (3, 32, 32)),
    ],
)
def test_config_round_trip(name, configuration, shape):
    cls = get_stage(name)
    spec = cls.describe(configuration, shape)
    stage = cls.from_config(configuration, shape)
    assert stage.to_config() == spec.configuration
    assert cls.describe(stage.to_config(), shape) == spec  # normalised form is a fixed point
    assert (stage.in_shape, stage.out_shape, stage.expansion) == (
        spec.in_shape,
        spec.out_shape,
        spec.expansion,
    )
    assert {k: tuple(v.shape) for k, v in stage.named_tensors().items()} == spec.params
    assert "x-note" not in configuration or spec.configuration["x-note"] == {"a": 1}


def test_defaults_are_filled_in():
    assert get_stage("upsample").describe({"factor": 2}, (1, 4, 4)).configuration == {
        "factor": 2,
        "mode": "bilinear",
    }
    spec = get_stage("hallucinate").describe({"arch": "pixel-affine", "count": 4}, (3, 32, 32))
    assert spec.configuration == {"arch": "pixel-affine", "count": 4, "hidden": 3, "kernel": 3}


@pytest.mark.parametrize(
    "name, configuration, shape, message",
    [
        ("hallucinate", {**HALLUCINATE, "arch": "mlp"}, (1, 8, 8), "'arch' must be one of"),
        ("hallucinate", {**HALLUCINATE, "depth": 2}, (1, 8, 8), "'depth' is not a known key"),
        ("hallucinate", {**HALLUCINATE, "count": 0}, (1, 8, 8), "'count' must be 1..4096, got 0"),
        ("hallucinate", {**HALLUCINATE, "count": 10**9}, (1, 8, 8), "'count' must be 1..4096"),
        ("hallucinate", {**HALLUCINATE, "count": 2.0}, (1, 8, 8), "'count' must be an integer"),
        ("hallucinate", {**HALLUCINATE, "count": True}, (1, 8, 8), "'count' must be an integer"),
        ("hallucinate", {**HALLUCINATE, "hidden": 257}, (1, 8, 8), "'hidden' must be 1..256"),
        ("hallucinate", {**HALLUCINATE, "kernel": 4}, (1, 8, 8), "'kernel' must be odd"),
        ("hallucinate", {**HALLUCINATE, "kernel": 9}, (1, 8, 8), "'kernel' must be 1..7"),
        (
            "hallucinate",
            {**HALLUCINATE, "kernel": 5},
            (1, 4, 8),
            "kernel 5 is larger than the input",
        ),
        ("hallucinate", {"count": 2}, (1, 8, 8), "'arch' is required"),
        ("hallucinate", ["count", 2], (1, 8, 8), "configuration must be an object"),
        ("hallucinate", HALLUCINATE, (1, 0, 8), "out of range"),
        ("hallucinate", HALLUCINATE, (1, 8), "must be \\(C, H, W\\)"),
        ("upsample", {"factor": 17}, (1, 8, 8), "'factor' must be 1..16"),
        ("upsample", {}, (1, 8, 8), "'factor' is required"),
        ("upsample", {"factor": 2, "mode": "area"}, (1, 8, 8), "'mode' must be one of"),
        ("upsample", {"factor": 16}, (1, 8, 8000), "exceed"),
    ],
)
def test_bad_configurations(name, configuration, shape, message):
    with pytest.raises(CodecError, match=message):
        get_stage(name).describe(configuration, shape)


@pytest.mark.parametrize(
    "pipeline, message",
    [
        (
            [entry("hallucinate", **HALLUCINATE) | {"version": 2}],
            "'hallucinate' version 2 is newer",
        ),
        ([entry("hallucinate", **HALLUCINATE) | {"version": 0}], "version must be a positive"),
        ([entry("blur", sigma=1)], "unknown stage 'blur'"),
        ([entry("upsample", factor=2) | {"extra": 1}], "'extra' is not known"),
        ([{"name": "upsample", "version": 1}], "lacks 'configuration'"),
        ([entry("hallucinate", **HALLUCINATE)] * 2, "at most one stage may expand"),
        ("upsample", "must be a list"),
    ],
)
def test_bad_pipelines(pipeline, message):
    with pytest.raises(CodecError, match=message):
        describe_pipeline(pipeline, (1, 8, 8))


def test_describe_pipeline_idc_haba():
    pipeline = [
        entry("upsample", factor=2),
        entry("hallucinate", arch="channel-affine", count=5) | {"x-by": "me"},
    ]
    spec = describe_pipeline(pipeline, (1, 14, 14))
    assert (spec.out_shape, spec.expansion) == ((1, 28, 28), 5)
    assert spec.stages[1].in_shape == (1, 28, 28)
    assert spec.params["pipeline.1.encoder.weight"] == (5, 3, 1, 3, 3)
    assert spec.params["pipeline.1.scale"] == (5, 3, 1, 1)
    assert set(spec.params) == {
        f"pipeline.1.{p}"
        for p in (
            "encoder.weight",
            "encoder.bias",
            "scale",
            "shift",
            "decoder.weight",
            "decoder.bias",
        )
    }
    empty = describe_pipeline([], (3, 32, 32))
    assert (empty.out_shape, empty.expansion, empty.params) == ((3, 32, 32), 1, {})
    # Huge per-pixel parameters are reported, not allocated: the format layer limits them.
    huge = describe_pipeline(
        [entry("hallucinate", arch="pixel-affine", count=4096, hidden=256)], (1, 4096, 4096)
    )
    assert huge.params["pipeline.0.scale"] == (4096, 256, 4094, 4094)


# -- parameter counts ----------------------------------------------------------------
def test_parameter_counts_match_method():
    cifar = get_stage("hallucinate").from_config({"arch": "pixel-affine", "count": 1}, (3, 32, 32))
    assert cifar.parameter_count() == 84 + 5400 + 84 == 5568
    mnist = get_stage("hallucinate").from_config(
        {"arch": "channel-affine", "count": 1}, (1, 28, 28)
    )
    assert mnist.parameter_count() == 30 + 6 + 28 == 64
    pipeline = Pipeline.from_manifest(
        [entry("upsample", factor=2), entry("hallucinate", arch="channel-affine", count=5)],
        (1, 14, 14),
    )
    assert pipeline.parameter_count() == 320
    assert Pipeline.from_manifest([], (1, 28, 28)).parameter_count() == 0


# -- initialisation ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["pixel-affine", "channel-affine"])
@pytest.mark.parametrize(
    "shape, hidden, kernel",
    [((1, 28, 28), 3, 3), ((3, 32, 32), 3, 3), ((3, 9, 9), 5, 5), ((2, 8, 8), 7, 1)],
)
def test_identity_init_in_the_interior(arch, shape, hidden, kernel):
    stage = get_stage("hallucinate").from_config(
        {"arch": arch, "count": 3, "hidden": hidden, "kernel": kernel}, shape
    )
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    y = stage.forward_all(x).view(4, 3, *shape)
    r = kernel // 2
    inner = (..., slice(r, shape[1] - r), slice(r, shape[2] - r))
    for v in range(3):
        torch.testing.assert_close(y[:, v][inner], x[inner])
    if r:
        assert y[..., :r, :].abs().max() == 0  # the ring decodes to the bias: see the spec


def test_fewer_hidden_than_channels_keeps_what_it_can():
    stage = get_stage("hallucinate").from_config(
        {"arch": "channel-affine", "count": 1, "hidden": 2}, (3, 6, 6)
    )
    x = torch.randn(2, 3, 6, 6)
    y = stage(x)
    torch.testing.assert_close(y[:, :2, 1:-1, 1:-1], x[:, :2, 1:-1, 1:-1])
    assert y[:, 2].abs().max() == 0


def test_noise_makes_hallucinators_differ_reproducibly():
    config = {"arch": "channel-affine", "count": 4}
    a = get_stage("hallucinate").from_config(
        config, (1, 8, 8), generator=torch.Generator().manual_seed(3), noise=0.01
    )
    b = get_stage("hallucinate").from_config(
        config, (1, 8, 8), generator=torch.Generator().manual_seed(3), noise=0.01
    )
    for name, t in a.named_tensors().items():
        assert torch.equal(t, b.named_tensors()[name])
    w = a.encoder.weight
    assert not torch.equal(w[0], w[1])
    assert (
        w - get_stage("hallucinate").from_config(config, (1, 8, 8)).encoder.weight
    ).abs().max() < 0.1


# -- decoding ------------------------------------------------------------------------
CASES = [((1, 28, 28), 3, 3), ((3, 32, 32), 3, 3), ((1, 8, 8), 3, 3), ((2, 7, 9), 4, 5)]


@pytest.mark.parametrize("arch", ["pixel-affine", "channel-affine"])
@pytest.mark.parametrize("shape, hidden, kernel", CASES)
def test_vectorised_equals_sequential(arch, shape, hidden, kernel):
    stage = randomised(
        get_stage("hallucinate").from_config(
            {"arch": arch, "count": 3, "hidden": hidden, "kernel": kernel}, shape
        )
    )
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, *shape, generator=g)
    variant = torch.tensor([2, 0, 1, 2, 2])
    with torch.no_grad():
        torch.testing.assert_close(
            stage(x, variant), sequential(stage, x, variant), atol=1e-5, rtol=1e-5
        )
        every = stage.forward_all(x)
        items = torch.arange(5).repeat_interleave(3), torch.arange(3).repeat(5)  # item b*K + v
        torch.testing.assert_close(
            every, sequential(stage, x[items[0]], items[1]), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("arch", ["pixel-affine", "channel-affine"])
def test_pipeline_with_upsample_in_front(arch):
    manifest = [
        entry("upsample", factor=2, mode="bilinear"),
        entry("hallucinate", arch=arch, count=4),
    ]
    pipeline = Pipeline.from_manifest(
        manifest, (1, 14, 14), generator=torch.Generator().manual_seed(0), noise=0.2
    )
    assert (pipeline.expansion, pipeline.out_shape, pipeline.to_manifest()[0]["configuration"]) == (
        4,
        (1, 28, 28),
        {"factor": 2, "mode": "bilinear"},
    )
    bases = torch.randn(3, 1, 14, 14)
    up = F.interpolate(bases, size=(28, 28), mode="bilinear", align_corners=False)
    with torch.no_grad():
        every = pipeline.decode_all(bases)
        assert every.shape == (12, 1, 28, 28)
        expected = sequential(
            pipeline.stages[1], up.repeat_interleave(4, 0), torch.arange(4).repeat(3)
        )
        torch.testing.assert_close(every, expected, atol=1e-5, rtol=1e-5)
        variant = torch.tensor([3, 1, 1])
        torch.testing.assert_close(
            pipeline.decode(bases, variant), every[torch.arange(3) * 4 + variant]
        )


def test_gradients_reach_bases_and_parameters():
    pipeline = Pipeline.from_manifest(
        [entry("upsample", factor=2), entry("hallucinate", arch="pixel-affine", count=3)],
        (3, 8, 8),
        generator=torch.Generator().manual_seed(0),
        noise=0.1,
    )
    bases = torch.randn(4, 3, 8, 8, requires_grad=True)
    (
        pipeline.decode(bases, torch.tensor([0, 2, 2, 0])).square().mean()
        + pipeline.decode_all(bases).mean()
    ).backward()
    assert bases.grad is not None and bases.grad.abs().sum() > 0
    for name, p in pipeline.named_tensors().items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # variant 1 is used only by decode_all: its gradient must still arrive
    assert pipeline.stages[1].scale.grad[1].abs().sum() > 0


def test_channel_affine_gradient_matches_unfolded_form():
    stage = randomised(
        get_stage("hallucinate").from_config({"arch": "channel-affine", "count": 2}, (1, 8, 8))
    )
    x = torch.randn(3, 1, 8, 8)
    variant = torch.tensor([1, 0, 1])
    stage(x, variant).sum().backward()
    folded = {k: p.grad.clone() for k, p in stage.named_tensors().items()}
    stage.zero_grad()
    sequential_params = stage.named_tensors()
    out = []
    for n in range(3):  # the same maths, with autograd through the unfolded form
        v = int(variant[n])
        z = F.conv2d(
            x[n : n + 1],
            sequential_params["encoder.weight"][v],
            sequential_params["encoder.bias"][v],
        )
        z = z * sequential_params["scale"][v] + sequential_params["shift"][v]
        out.append(
            F.conv_transpose2d(
                z, sequential_params["decoder.weight"][v], sequential_params["decoder.bias"][v]
            )
        )
    torch.cat(out).sum().backward()
    for k, p in stage.named_tensors().items():
        torch.testing.assert_close(folded[k], p.grad, atol=1e-4, rtol=1e-4)


def test_variant_checks():
    stage = get_stage("hallucinate").from_config({"arch": "channel-affine", "count": 3}, (1, 8, 8))
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(CodecError, match="variant per sample is required"):
        stage(x)
    with pytest.raises(CodecError, match=r"in \[0, 3\)"):
        stage(x, torch.tensor([0, 3]))
    with pytest.raises(CodecError, match="integer tensor of shape"):
        stage(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(CodecError, match="input must be"):
        stage(torch.zeros(2, 1, 9, 9), torch.tensor([0, 1]))
    assert stage(x[:0], torch.zeros(0, dtype=torch.long)).shape == (0, 1, 8, 8)
    single = get_stage("hallucinate").from_config({"arch": "channel-affine", "count": 1}, (1, 8, 8))
    assert single.expansion == 1 and single(x).shape == x.shape


def test_upsample_modes():
    x = torch.arange(4.0).view(1, 1, 2, 2)
    nearest = get_stage("upsample").from_config({"factor": 2, "mode": "nearest"}, (1, 2, 2))
    assert nearest(x).flatten().tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    bilinear = get_stage("upsample").from_config({"factor": 2}, (1, 2, 2))
    # half-pixel centres, edges clamped: row 0 is [0, 0.25, 0.75, 1]
    assert bilinear(x)[0, 0, 0].tolist() == [0.0, 0.25, 0.75, 1.0]
    one = get_stage("upsample").from_config({"factor": 1}, (1, 2, 2))
    assert torch.equal(one(x), x) and one.parameter_count() == 0 and one.named_tensors() == {}


# -- pipeline tensors ----------------------------------------------------------------
def test_named_tensors_round_trip():
    manifest = [entry("upsample", factor=2), entry("hallucinate", arch="pixel-affine", count=2)]
    a = Pipeline.from_manifest(
        manifest, (3, 5, 5), generator=torch.Generator().manual_seed(0), noise=0.1
    )
    b = Pipeline.from_manifest(a.to_manifest(), (3, 5, 5))
    b.load_tensors({k: v.detach().clone() for k, v in a.named_tensors().items()})
    bases = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(a.decode_all(bases), b.decode_all(bases))
    tensors = {k: v.detach() for k, v in a.named_tensors().items()}
    with pytest.raises(CodecError, match="missing \\['pipeline.1.shift'\\]"):
        b.load_tensors({k: v for k, v in tensors.items() if k != "pipeline.1.shift"})
    with pytest.raises(CodecError, match="unexpected"):
        b.load_tensors({**tensors, "pipeline.2.scale": torch.zeros(1)})
    with pytest.raises(CodecError, match="has shape"):
        b.load_tensors({**tensors, "pipeline.1.scale": torch.zeros(2, 3, 1, 1)})
    with pytest.raises(CodecError, match="NaN or Inf"):
        b.load_tensors(
            {
                **tensors,
                "pipeline.1.shift": torch.full_like(tensors["pipeline.1.shift"], float("nan")),
            }
        )


def test_empty_pipeline_is_the_raw_archive():
    pipeline = Pipeline.from_manifest([], (1, 8, 8))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(pipeline.decode(x), x) and torch.equal(pipeline.decode_all(x), x)
    assert (pipeline.expansion, pipeline.to_manifest(), pipeline.named_tensors()) == (1, [], {})
    pipeline.load_tensors({})
    with pytest.raises(CodecError, match="bases must be"):
        pipeline.decode(torch.zeros(3, 1, 9, 8))


def test_pipeline_errors_name_the_stage_index():
    with pytest.raises(CodecError) as caught:
        describe_pipeline(
            [entry("upsample", factor=2), entry("hallucinate", **{**HALLUCINATE, "count": 0})],
            (1, 4, 4),
        )
    assert caught.value.index == 1
    assert (
        caught.value.detail == "stage 'hallucinate': configuration 'count' must be 1..4096, got 0"
    )
    assert str(caught.value) == "pipeline[1]: " + caught.value.detail


def test_variants_go_to_the_expanding_stage_only():
    manifest = [
        entry("hallucinate", arch="channel-affine", count=3),
        entry("hallucinate", arch="channel-affine", count=1),
    ]
    pipeline = Pipeline.from_manifest(manifest, (1, 6, 6))
    assert pipeline.expansion == 3
    bases = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            pipeline.decode(bases, torch.tensor([2, 1])),
            pipeline.decode_all(bases)[torch.tensor([2, 4])],
        )


# -- the stage contract, for every stage and variant -----------------------------------
class TestUpsampleBilinear(StageContract):
    name, configuration, in_shape = "upsample", {"factor": 2}, (1, 7, 7)


class TestUpsampleNearest(StageContract):
    name, configuration, in_shape = "upsample", {"factor": 3, "mode": "nearest"}, (3, 4, 5)


class TestUpsampleBicubic(StageContract):
    name, configuration, in_shape = "upsample", {"factor": 2, "mode": "bicubic"}, (2, 5, 6)


class TestHallucinatePixelAffine(StageContract):
    name, configuration, in_shape = "hallucinate", {"arch": "pixel-affine", "count": 3}, (3, 8, 8)


class TestHallucinateChannelAffine(StageContract):
    name, in_shape = "hallucinate", (1, 9, 9)
    configuration = {"arch": "channel-affine", "count": 4, "hidden": 2, "kernel": 5}


class TestHallucinateOneHallucinator(StageContract):
    # expansion 1: no variant is passed
    name, configuration, in_shape = "hallucinate", {"arch": "channel-affine", "count": 1}, (2, 6, 7)


class QuantizeContract(StageContract):
    """quantize's grid (scale, zero-point) is fitted to the bases, not learned: it is
    stored (buffers) but no optimiser moves it, so the gradient check asks the input only."""

    name = "quantize"

    def test_gradients_reach_the_input_and_every_parameter(self):
        stage = self.stage(seed=6)
        x = self.images(3, seed=7).requires_grad_(True)
        stage(x).square().mean().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert list(stage.parameters()) == []  # nothing for an optimiser to move


class TestQuantizeUint8Channel(QuantizeContract):
    configuration, in_shape = {"dtype": "uint8", "granularity": "channel"}, (3, 4, 4)


class TestQuantizeUint4(QuantizeContract):
    configuration, in_shape = {"dtype": "uint4"}, (1, 5, 5)


class TestQuantizeFloat16(QuantizeContract):
    configuration, in_shape = {"dtype": "float16"}, (2, 3, 4)


class TestQuantizeBfloat16(QuantizeContract):
    configuration, in_shape = {"dtype": "bfloat16"}, (2, 3, 4)


class FrequencyContract(StageContract):
    """frequency's mask is fitted to the real images, not learned: stored (a uint8
    buffer), never moved by an optimiser; gradients reach the coefficients."""

    name = "frequency"

    def test_gradients_reach_the_input_and_every_parameter(self):
        stage = self.stage(seed=6)
        x = self.images(3, seed=7).requires_grad_(True)
        stage(x).square().mean().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert list(stage.parameters()) == []

    def test_description_is_normalised_and_matches_the_module(self):
        super().test_description_is_normalised_and_matches_the_module()
        assert self.stage().named_tensors()["mask"].dtype == torch.uint8

    def test_stored_tensors_reproduce_the_stage(self):
        # (the contract's NaN case has no meaning for a uint8 mask: its values are checked)
        source, target = self.stage(), self.stage()
        c, _, _ = source.out_shape
        source.fit(
            torch.randn(8, c, *source.out_shape[1:], generator=torch.Generator().manual_seed(4))
        )
        mask = source.named_tensors()["mask"].clone()
        target.load_tensors({"mask": mask})
        x = self.images(2, seed=5)
        with torch.no_grad():
            assert torch.equal(source(x), target(x))
        with pytest.raises(CodecError, match="missing"):
            target.load_tensors({})
        with pytest.raises(CodecError, match="unexpected"):
            target.load_tensors({"mask": mask, "no.such.tensor": torch.zeros(1)})
        with pytest.raises(CodecError, match="other than 0, 1"):
            target.load_tensors({"mask": mask * 2})
        fewer = mask.clone()
        fewer.view(c, -1)[0, torch.nonzero(fewer.view(c, -1)[0])[0]] = 0
        with pytest.raises(CodecError, match="exactly"):
            target.load_tensors({"mask": fewer})
        with pytest.raises(CodecError, match="uint8"):
            target.load_tensors({"mask": mask.float()})


class TestFrequencyRect(FrequencyContract):
    configuration, in_shape = {"height": 5, "width": 6, "keep": 7}, (2, 1, 7)


class TestFrequencyAll(FrequencyContract):
    configuration, in_shape = {"height": 3, "width": 3, "keep": 9}, (1, 1, 9)


def test_every_registered_stage_runs_the_contract():
    # A new stage without a StageContract test class here fails this test.
    assert {cls.name for cls in StageContract.__subclasses__()} == set(STAGES)
