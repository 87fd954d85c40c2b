"""The pipeline as data: codec names are presets of manifest entries, the planner takes
entries, and each stage declares what the planner needs."""

from __future__ import annotations

import pytest

from habactl.codecs.hallucinate import Hallucinate
from habactl.codecs.registry import PRESETS, STAGES, expand_preset, preset_name
from habactl.codecs.upsample import Upsample
from habactl.data import load_source
from habactl.distill import DistillConfig, Distiller
from habactl.distill.errors import DistillError
from habactl.distill.planner import plan_budget, plan_pipeline

MNIST = (1, 28, 28)


def test_presets_expand_to_entries_and_back():
    for preset in PRESETS:
        entries = expand_preset(preset)
        assert preset_name(entries) == preset
        assert [e["name"] for e in entries] == list(PRESETS[preset])
        assert plan_pipeline(entries, MNIST, 10, 2) == plan_budget(preset, MNIST, 10, 2)


def test_stages_declare_their_options_shape_and_parameter_count():
    assert Upsample.input_shape_for({"factor": 4}, (3, 32, 32)) == (3, 8, 8)
    config = Hallucinate.configure({"count": 2})
    assert config == {"arch": "channel-affine", "count": 2, "hidden": 3, "kernel": 3}
    assert Hallucinate.parameter_values(config, (1, 14, 14)) == 2 * 64
    for cls in STAGES.values():
        assert cls.summary and all(opt.key for opt in cls.options)
        # the declared defaults are valid, for the input shape that decodes to 16x16
        # (a frequency stage's input is its (C, 1, keep) coefficients, not an image)
        config = cls.configure()
        cls.describe(config, cls.input_shape_for(config, (1, 16, 16)))


def test_any_order_of_entries_plans_and_is_labelled_by_its_stages():
    entries = [expand_preset("haba")[0], expand_preset("idc")[0]]  # hallucinate, then upsample
    plan = plan_pipeline(entries, MNIST, 10, 1)
    assert plan.codec == "hallucinate+upsample" and plan.base_shape == (1, 14, 14)
    with pytest.raises(DistillError, match="does not divide"):
        plan_pipeline(
            [{"name": "upsample", "version": 1, "configuration": {"factor": 3}}], MNIST, 10, 1
        )
    with pytest.raises(DistillError, match="unknown stage"):
        plan_pipeline([{"name": "jpeg", "version": 1, "configuration": {}}], MNIST, 10, 1)


def test_entries_in_the_config_give_the_same_archive_as_the_codec_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    source = load_source("digits")
    settings = dict(
        iterations=1,
        objective_settings={"real_per_class": 4},
        contrastive_settings={"batch": 8},
        device="cpu",
    )
    by_name = DistillConfig(codec="haba+idc", hallucinators=3, **settings)
    by_entries = DistillConfig(
        pipeline=tuple(expand_preset("haba+idc", {"hallucinate": {"count": 3}})),
        codec="ignored",
        **settings,
    )
    paths = []
    for i, config in enumerate((by_name, by_entries)):
        distiller = Distiller(source, config)
        paths.append(distiller.run(tmp_path / f"{i}.haba").path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
