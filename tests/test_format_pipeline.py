"""Archives with decode stages: parameter tensors, stage errors, expansion bombs.

The container asks the stage lookup it is given (the reader and the writer pass
``habactl.codecs.registry.describe_pipeline``) what a pipeline implies. The first tests
stand in a tiny fake registry, so the container's own logic is tested whatever state
the codecs are in; the last ones run against the real codecs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

from habactl.format import (
    ArchiveError,
    Limits,
    open_archive,
    save_archive,
    storage_account,
    verify_archive,
)
from habactl.format.account import Part
from helpers import make_manifest, make_tensors, rejects, rewrite


class FakeSpec(NamedTuple):
    out_shape: tuple[int, int, int]
    expansion: int
    params: dict[str, tuple[int, ...]]


def fake_describe_pipeline(pipeline, base_shape):
    """'tile': K variants, a (K, C) scale; 'grow': doubles H and W, no parameters."""
    from habactl.codecs.errors import CodecError

    shape, expansion, params = tuple(base_shape), 1, {}
    for i, stage in enumerate(pipeline):
        config = stage["configuration"]
        if stage["name"] == "tile":
            if set(config) != {"count"}:  # a strict codec: unknown keys are errors
                raise CodecError(f"stage 'tile': unknown configuration keys {sorted(config)}")
            expansion *= config["count"]
            params[f"pipeline.{i}.scale"] = (config["count"], shape[0])
        elif stage["name"] == "grow":
            shape = (shape[0], shape[1] * 2, shape[2] * 2)
        else:
            raise CodecError(f"unknown stage {stage['name']!r}")
    return FakeSpec(shape, expansion, params)


@pytest.fixture
def fake_codecs(monkeypatch):
    # The container takes its stage lookup as an argument; the reader and the writer
    # pass the codec registry's, which is what is swapped here.
    import habactl.format.reader as reader
    import habactl.format.writer as writer

    monkeypatch.setattr(reader, "describe_pipeline", fake_describe_pipeline)
    monkeypatch.setattr(writer, "describe_pipeline", fake_describe_pipeline)


def tiled(count=4, grow=False, counts="all"):
    pipeline = ([{"name": "grow", "version": 1, "configuration": {}}] if grow else []) + [
        {"name": "tile", "version": 1, "configuration": {"count": count}}
    ]
    manifest = make_manifest(
        pipeline=pipeline, counts=counts, base_shape=(1, 2, 2) if grow else None
    )
    tensors = make_tensors(manifest)
    index = len(pipeline) - 1
    tensors[f"pipeline.{index}.scale"] = torch.ones(count, 1)
    return manifest, tensors


def test_pipeline_parameters_round_trip(tmp_path, fake_codecs):
    manifest, tensors = tiled(grow=True)
    path = save_archive(tmp_path / "t.haba", tensors, manifest)
    with open_archive(path) as archive:
        assert archive.names() == ["bases", "labels", "pipeline.1.scale"]
        assert archive.layout.expansion == 4 and archive.layout.expanded_items == 24
        assert torch.equal(archive.tensors()["pipeline.1.scale"], tensors["pipeline.1.scale"])
        account = storage_account(archive.manifest)
    assert account.parts["hallucinators"] == Part(4, 16, True)
    assert account.parts["bases"].values == 6 * 4
    assert account.stored_values == 24 + 4


def test_claim_counting_bases_only_is_reported(tmp_path, fake_codecs):
    manifest, tensors = tiled(counts="bases")
    path = save_archive(tmp_path / "t.haba", tensors, manifest)
    account = storage_account(open_archive(path).manifest)
    assert account.claim_values == 96 and account.stored_values == 100
    assert math.isclose(account.ratio, 100 / 96) and account.claim_ratio == 1.0
    assert "hallucinators" in account.note


def test_parameter_tensors_must_match_the_pipeline(tmp_path, fake_codecs):
    manifest, tensors = tiled()
    with pytest.raises(ArchiveError, match="tensor 'pipeline.0.scale': missing"):
        save_archive(
            tmp_path / "a.haba", {k: v for k, v in tensors.items() if "scale" not in k}, manifest
        )
    with pytest.raises(
        ArchiveError,
        match=r"'pipeline.0.scale': is F32 \[3, 1\], the manifest implies F32 \[4, 1\]",
    ):
        save_archive(
            tmp_path / "b.haba", {**tensors, "pipeline.0.scale": torch.ones(3, 1)}, manifest
        )
    with pytest.raises(ArchiveError, match="'pipeline.0.scale': 1 values are NaN"):
        save_archive(
            tmp_path / "c.haba",
            {**tensors, "pipeline.0.scale": torch.tensor([[1.0], [2], [3], [math.nan]])},
            manifest,
        )


def test_unknown_stage_is_named(tmp_path, fake_codecs):
    manifest, tensors = tiled(grow=True)
    path = save_archive(tmp_path / "t.haba", tensors, manifest)
    rewrite(path, lambda m: m["pipeline"][1].update(name="teleport"))
    rejects(path, "manifest: pipeline[1] (stage 'teleport'): unknown stage 'teleport'")


def test_ignorable_keys_never_reach_the_codec(tmp_path, fake_codecs):
    manifest, tensors = tiled()
    manifest["pipeline"][0]["configuration"]["x-comment"] = "tuned by hand"
    manifest["pipeline"][0]["x-origin"] = "elsewhere"
    path = save_archive(tmp_path / "t.haba", tensors, manifest)
    assert verify_archive(path) == []
    assert (
        open_archive(path).manifest["pipeline"][0]["configuration"]["x-comment"] == "tuned by hand"
    )


def test_out_shape_must_be_the_image_shape(tmp_path, fake_codecs):
    manifest, tensors = tiled()
    path = save_archive(tmp_path / "t.haba", tensors, manifest)
    rewrite(
        path, lambda m: m["pipeline"].insert(0, {"name": "grow", "version": 1, "configuration": {}})
    )
    rejects(
        path,
        "manifest: pipeline: decodes bases [1, 4, 4] to [1, 8, 8], "
        "but the image shape is [1, 4, 4]",
    )


def test_expansion_bomb_is_refused_before_reading_tensors(tmp_path, fake_codecs):
    manifest, tensors = tiled()
    path = save_archive(tmp_path / "bomb.haba", tensors, manifest)

    def bomb(m):  # a few hundred bytes claiming 10**8 bases x 10**6 variants
        m["bases"].update(count=3 * 10**8, per_class=[10**8] * 3)
        m["pipeline"][0]["configuration"]["count"] = 10**6

    rewrite(path, bomb)
    assert path.stat().st_size < 4096
    rejects(path, "expansion bomb")


def test_stage_parameter_limit(tmp_path, fake_codecs):
    manifest, tensors = tiled()
    path = save_archive(tmp_path / "t.haba", tensors, manifest)
    rejects(
        path,
        "parameter 'pipeline.0.scale' has 4 values, allowed 3",
        limits=Limits(max_stage_params=3),
    )
    rejects(path, "has 1 stages, allowed 0", limits=Limits(max_stages=0))


# --- the real codecs -------------------------------------------------------------------------


def _real_describe():
    # habactl's own registry: a failure to import it or a missing stage is a failure.
    from habactl.codecs import registry

    assert "hallucinate" in registry.STAGES
    return registry.describe_pipeline


HALLUCINATE = {
    "name": "hallucinate",
    "version": 1,
    "configuration": {"arch": "channel-affine", "count": 3, "hidden": 3, "kernel": 3},
}


def test_real_hallucinate_archive_round_trip(tmp_path):
    describe = _real_describe()
    manifest = make_manifest(pipeline=[HALLUCINATE], shape=(1, 8, 8), counts="bases")
    tensors = make_tensors(manifest)
    spec = describe(manifest["pipeline"], tuple(manifest["bases"]["shape"]))
    tensors.update({name: torch.randn(shape) for name, shape in spec.params.items()})
    path = save_archive(tmp_path / "h.haba", tensors, manifest)
    assert verify_archive(path) == []
    account = storage_account(open_archive(path).manifest)
    assert (
        account.parts["hallucinators"].values == sum(math.prod(s) for s in spec.params.values()) > 0
    )
    assert account.claim_values == account.parts["bases"].values


def test_real_hallucinate_expansion_bomb(tmp_path):
    describe = _real_describe()
    manifest = make_manifest(pipeline=[HALLUCINATE], shape=(1, 8, 8))
    tensors = make_tensors(manifest)
    spec = describe(manifest["pipeline"], tuple(manifest["bases"]["shape"]))
    tensors.update({name: torch.randn(shape) for name, shape in spec.params.items()})
    path = save_archive(tmp_path / "bomb.haba", tensors, manifest)
    rewrite(path, lambda m: m["bases"].update(count=3 * 10**8, per_class=[10**8] * 3))
    rejects(path, "expansion bomb")


def test_real_codec_refusal_becomes_archive_error(tmp_path):
    _real_describe()
    manifest = make_manifest(
        pipeline=[{**HALLUCINATE, "configuration": {**HALLUCINATE["configuration"], "count": 0}}],
        shape=(1, 8, 8),
    )
    with pytest.raises(
        ArchiveError, match=r"bad.haba: manifest: pipeline\[0\] \(stage 'hallucinate'\)"
    ):
        save_archive(tmp_path / "bad.haba", make_tensors(manifest), manifest)
