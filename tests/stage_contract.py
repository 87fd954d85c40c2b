"""The contract every decode stage keeps, as tests a new stage inherits.

A stage's test class sets ``name``, ``configuration`` and ``in_shape`` and subclasses
``StageContract``; pytest then runs every test below for it (see tests/test_codecs.py).
Each checks something the rest of habactl relies on: the format layer (a pure, normalised
description), the engine (gradients, the item order of ``forward_all``), the archive (the
tensors round-trip) and the documentation (a spec page under codecs/).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from habactl.codecs import STAGES, CodecError, Pipeline, get_stage

SPEC_PAGES = Path(__file__).resolve().parents[1] / "codecs"


class StageContract:
    name: ClassVar[str]
    configuration: ClassVar[dict[str, Any]]
    in_shape: ClassVar[tuple[int, int, int]]

    # -- helpers -------------------------------------------------------------------
    def stage(self, seed: int | None = None):
        """A fresh stage; with ``seed``, every parameter moved off its initialisation."""
        stage = get_stage(self.name).from_config(dict(self.configuration), self.in_shape)
        if seed is not None:
            stage.init_noise(0.3, torch.Generator().manual_seed(seed))
        return stage

    def images(self, n: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(n, *self.in_shape, generator=torch.Generator().manual_seed(seed))

    @staticmethod
    def variants(stage, n: int) -> torch.Tensor | None:
        """A variant per sample (every one in turn) for expanding stages, else None."""
        return torch.arange(n) % stage.expansion if stage.expansion > 1 else None

    # -- the contract --------------------------------------------------------------
    def test_registered_with_a_spec_page(self):
        cls = get_stage(self.name)
        assert STAGES[self.name] is cls and cls.name == self.name
        assert isinstance(cls.version, int) and cls.version >= 1
        assert (SPEC_PAGES / f"{self.name}.md").is_file(), "every stage has its spec page"

    def test_description_is_normalised_and_matches_the_module(self):
        cls = get_stage(self.name)
        spec = cls.describe(dict(self.configuration), self.in_shape)
        assert cls.describe(spec.configuration, self.in_shape) == spec  # a fixed point
        stage = self.stage()
        assert stage.to_config() == spec.configuration
        assert (stage.in_shape, stage.out_shape, stage.expansion) == (
            spec.in_shape,
            spec.out_shape,
            spec.expansion,
        )
        assert {k: tuple(v.shape) for k, v in stage.named_tensors().items()} == spec.params
        values = sum(math.prod(shape) for shape in spec.params.values())
        assert (
            stage.parameter_count()
            == values
            == cls.parameter_values(spec.configuration, self.in_shape)
        )

    def test_the_planner_can_walk_back_to_the_input_shape(self):
        cls = get_stage(self.name)
        spec = cls.describe(dict(self.configuration), self.in_shape)
        assert tuple(cls.input_shape_for(spec.configuration, spec.out_shape)) == self.in_shape

    def test_pipeline_entry_round_trip(self):
        spec = get_stage(self.name).describe(dict(self.configuration), self.in_shape)
        entry = {
            "name": self.name,
            "version": get_stage(self.name).version,
            "configuration": dict(self.configuration),
        }
        pipeline = Pipeline.from_manifest([entry], self.in_shape)
        assert pipeline.to_manifest() == [{**entry, "configuration": spec.configuration}]
        assert (pipeline.out_shape, pipeline.expansion) == (spec.out_shape, spec.expansion)

    def test_output_shapes_and_the_item_order_of_forward_all(self):
        stage = self.stage(seed=1)
        x = self.images(3)
        e = stage.expansion
        with torch.no_grad():
            out = stage(x, self.variants(stage, 3))
            every = stage.forward_all(x)
            assert out.shape == (3, *stage.out_shape) and out.dtype == torch.float32
            assert every.shape == (3 * e, *stage.out_shape)
            for b in range(3):  # item b·E + v is sample b through variant v
                for v in range(e):
                    one = stage(x[b : b + 1], torch.tensor([v]) if e > 1 else None)
                    torch.testing.assert_close(every[b * e + v], one[0], atol=1e-5, rtol=1e-5)

    def test_samples_are_decoded_independently_and_deterministically(self):
        stage = self.stage(seed=2)
        x = self.images(4, seed=3)
        variant = self.variants(stage, 4)
        with torch.no_grad():
            batch = stage(x, variant)
            assert torch.equal(batch, stage(x, variant))
            for n in range(4):
                alone = stage(x[n : n + 1], None if variant is None else variant[n : n + 1])
                torch.testing.assert_close(batch[n : n + 1], alone, atol=1e-5, rtol=1e-5)
            empty = stage(x[:0], None if variant is None else variant[:0])
            assert empty.shape == (0, *stage.out_shape)

    def test_stored_tensors_reproduce_the_stage(self):
        source = self.stage(seed=4)
        target = self.stage()
        tensors = {k: v.detach().clone() for k, v in source.named_tensors().items()}
        target.load_tensors(tensors)
        x = self.images(2, seed=5)
        with torch.no_grad():
            assert torch.equal(source.forward_all(x), target.forward_all(x))
        if tensors:
            first = sorted(tensors)[0]
            with pytest.raises(CodecError, match="missing"):
                target.load_tensors({k: v for k, v in tensors.items() if k != first})
            with pytest.raises(CodecError, match="NaN or Inf"):
                target.load_tensors({**tensors, first: torch.full_like(tensors[first], math.nan)})
        with pytest.raises(CodecError, match="unexpected"):
            target.load_tensors({**tensors, "no.such.tensor": torch.zeros(1)})

    def test_gradients_reach_the_input_and_every_parameter(self):
        stage = self.stage(seed=6)
        x = self.images(3, seed=7).requires_grad_(True)
        (stage(x, self.variants(stage, 3)).square().mean() + stage.forward_all(x).mean()).backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        for name, p in stage.named_tensors().items():
            assert p.grad is not None and p.grad.abs().sum() > 0, name

    def test_a_wrong_input_shape_is_a_codec_error(self):
        stage = self.stage()
        c, h, w = self.in_shape
        for bad in (torch.zeros(2, c, h + 1, w), torch.zeros(2, c + 1, h, w), torch.zeros(c, h, w)):
            n = bad.shape[0] if bad.dim() == 4 else 2
            with pytest.raises(CodecError, match="input must be"):
                stage(bad, self.variants(stage, n))
