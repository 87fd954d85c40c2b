"""format/manifest.schema.json agrees with the reader on what a manifest looks like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from habactl.format import open_archive, save_archive
from test_format import make_manifest, make_tensors

SCHEMA = json.loads((Path(__file__).parents[1] / "format" / "manifest.schema.json").read_text())


def written_manifests(tmp_path: Path) -> list[dict]:
    variants = [
        make_manifest(),
        make_manifest(labels="soft", counts="bases", normalization={"kind": "none"}),
        make_manifest(shape=(3, 4, 4), normalization={
            "kind": "zca", "mean": [0.0] * 3, "std": [1.0] * 3, "eps": 0.1}),
    ]
    variants[0]["x-vendor"] = {"anything": True}
    variants[1]["training"]["learned_lr"] = 0.01
    manifests = []
    for i, manifest in enumerate(variants):
        path = save_archive(tmp_path / f"{i}.haba", make_tensors(manifest), manifest)
        manifests.append(open_archive(path).manifest)
    return manifests


def test_schema_lists_every_field_the_writer_writes(tmp_path):
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for manifest in written_manifests(tmp_path):
        fields = {k for k in manifest if not k.startswith("x-")}
        assert fields == set(SCHEMA["required"]) == set(SCHEMA["properties"])


def test_schema_accepts_written_manifests_and_refuses_broken_ones(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    validator.check_schema(SCHEMA)
    manifests = written_manifests(tmp_path)
    for manifest in manifests:
        validator.validate(manifest)
    for edit in (
        lambda m: m.update(comment="unknown field"),
        lambda m: m["image"].update(channels=0),
        lambda m: m["normalization"].update(eps=0.1),
        lambda m: m.update(format_version="2.0"),
        lambda m: m["labels"].update(kind="fuzzy"),
        lambda m: m["provenance"].pop("seed"),
    ):
        broken = json.loads(json.dumps(manifests[0]))
        edit(broken)
        assert not validator.is_valid(broken), edit
