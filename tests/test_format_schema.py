"""format/manifest.schema.json agrees with the reader on what a manifest looks like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from habactl.format import open_archive, save_archive
from helpers import make_manifest, make_tensors

SCHEMA = json.loads((Path(__file__).parents[1] / "format" / "manifest.schema.json").read_text())


def written_manifests(tmp_path: Path) -> list[dict]:
    variants = [
        make_manifest(),
        make_manifest(labels="soft", counts="bases", normalization={"kind": "none"}),
        make_manifest(
            shape=(3, 4, 4),
            normalization={"kind": "zca", "mean": [0.0] * 3, "std": [1.0] * 3, "eps": 0.1},
        ),
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
    # manifest_digest is required from format 1.2 on: by the schema's if/else.
    required = set(SCHEMA["required"]) | set(SCHEMA["else"]["required"])
    for manifest in written_manifests(tmp_path):
        fields = {k for k in manifest if not k.startswith("x-")}
        assert fields == required == set(SCHEMA["properties"])


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


# --- the schema and the reader's validator agree --------------------------------------

GOLDEN = sorted((Path(__file__).parents[1] / "format" / "golden").glob("v*/*.haba"))


def golden_manifests() -> list[dict]:
    manifests = []
    for path in GOLDEN:
        with open_archive(path) as archive:
            manifests.append(archive.manifest)
    return manifests


def reader_accepts(manifest: dict) -> bool:
    from habactl.codecs.registry import describe_pipeline
    from habactl.format import DEFAULT_LIMITS, ArchiveError
    from habactl.format.manifest import validate_manifest

    try:
        validate_manifest(manifest, DEFAULT_LIMITS, stages=describe_pipeline)
    except ArchiveError:
        return False
    return True


def edited(manifest: dict, edit) -> dict:
    copy = json.loads(json.dumps(manifest))
    edit(copy)
    return copy


def _set(path: str, value):
    def edit(m: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            m = m[key]
        m[last] = value

    return edit


# Both must refuse each of these; each is a rule the schema can express.
HOSTILE = {
    "unknown field": _set("comment", "x"),
    "channels 0": _set("image.channels", 0),
    "channels above the limit": _set("image.channels", 17),
    "newer major": _set("format_version", "2.0"),
    "leading zero": _set("format_version", "1.01"),
    "seven-digit minor": _set("format_version", "1.1234567"),
    "month 13": _set("provenance.created", "2026-13-01T00:00:00Z"),
    "hour 24": _set("provenance.created", "2026-01-01T24:00:00Z"),
    "ten fraction digits": _set("provenance.created", "2026-01-01T00:00:00.1234567890Z"),
    "no Z": _set("provenance.created", "2026-01-01T00:00:00"),
    "lr_decay_at above 1": _set("training.recommended.lr_decay_at", 1.5),
    "lr_decay_at 0": _set("training.recommended.lr_decay_at", 0),
    "unknown loss": _set("training.recommended.loss", "mse"),
    "zero temperature": _set("training.recommended.temperature", 0),
    "unknown optimizer": _set("training.recommended.optimizer", "adam"),
    "unknown schedule": _set("training.recommended.schedule", "linear"),
    "crop_scale above 1": _set("training.recommended.crop_scale", 1.5),
    "teacher without its size": _set(
        "training.recommended.teacher", {"name": "t", "sha256": "0" * 64}
    ),
    "fuzzy labels": _set("labels.kind", "fuzzy"),
    "negative seed": _set("provenance.seed", -1),
    "seed above 2^64-1": _set("provenance.seed", 2**64),
    "boolean iterations": _set("provenance.iterations", True),
    "no classes": _set("classes", []),
    "bell in a class name": _set("classes", ["a\x07", "b"]),
    "C1 control in a name": _set("provenance.library", "habactl\x85"),
    "1025-character text": _set("provenance.library", "x" * 1025),
    "empty text": _set("provenance.objective", ""),
    "unknown counts": _set("storage.counts", "some"),
    "zero learned lr": _set("training.learned_lr", 0),
    "uppercase fingerprint": _set("provenance.dataset.fingerprint", "sha256:" + "A" * 64),
    "stage version 0": lambda m: m["pipeline"].append(
        {"name": "upsample", "version": 0, "configuration": {"factor": 1}}
    ),
    "unknown field in image": _set("image.depth", 1),
    "string width": _set("image.width", "6"),
    "1.2 without a manifest digest": lambda m: (
        m.update(format_version="1.2"),
        m.pop("manifest_digest", None),
    ),
    "malformed manifest digest": _set("manifest_digest", "sha256:" + "0" * 63),
    # Format 1.3: the storage forms of soft labels and the recorded teacher.
    "unknown labels form": lambda m: m["labels"].update(kind="soft", form="int4"),
    "a form on hard labels": lambda m: m["labels"].update(kind="hard", form="float16"),
    "top-k without k": lambda m: (
        m["labels"].update(kind="soft", form="top-k"),
        m["labels"].pop("k", None),
    ),
    "top-k with k 0": lambda m: m["labels"].update(kind="soft", form="top-k", k=0),
    "k without top-k": lambda m: m["labels"].update(kind="soft", form="uint8", k=2),
    "a labels form in a 1.2 manifest": lambda m: (
        m.update(format_version="1.2"),
        m["labels"].update(kind="soft", form="float16"),
    ),
    "a teacher in a 1.2 manifest": lambda m: (
        m.update(format_version="1.2"),
        m["labels"].pop("form", None),
        m["labels"].pop("k", None),
        m["provenance"].update(
            teacher={"name": "t", "sha256": "0" * 64, "arch": "convnet", "temperature": 1}
        ),
    ),
    "a teacher at temperature 0": lambda m: (
        m.update(format_version="1.3"),
        m["provenance"].update(
            teacher={"name": "t", "sha256": "0" * 64, "arch": "convnet", "temperature": 0}
        ),
    ),
}
# Rules across fields, or of the calendar, that a JSON Schema cannot state: the reader
# alone refuses them, and the schema's description says so.
READER_ONLY = {
    "per_class does not sum to count": _set("bases.count", 99),
    "budget_values disagrees": _set("storage.budget_values", 1),
    "mean of the wrong length": _set("normalization.mean", [0.5, 0.5]),
    "30 February": _set("provenance.created", "2026-02-30T00:00:00Z"),
    "29 February of a common year": _set("provenance.created", "2025-02-29T00:00:00Z"),
    # JSON Schema counts 1.0 as an integer; the spec (and the reader) do not.
    "1.0 for an int": _set("provenance.seed", 1.0),
    "top-k with more values than classes": lambda m: (
        m.update(format_version="1.3"),
        m.setdefault("manifest_digest", "sha256:" + "0" * 64),
        m["labels"].update(kind="soft", form="top-k", k=len(m["classes"]) + 1),
    ),
}


def test_schema_and_reader_agree_on_every_golden_manifest():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    manifests = golden_manifests()
    assert len(manifests) >= 4
    for manifest in manifests:
        assert reader_accepts(manifest)
        validator.validate(manifest)
        ignorable = edited(manifest, _set("x-note", {"anything": [1, 2]}))
        assert reader_accepts(ignorable) and validator.is_valid(ignorable)
        leap = edited(manifest, _set("provenance.created", "2028-02-29T23:59:60.5Z"))
        assert reader_accepts(leap) and validator.is_valid(leap)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_schema_and_reader_both_refuse_hostile_manifests(case):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for manifest in golden_manifests():
        broken = edited(manifest, HOSTILE[case])
        assert not reader_accepts(broken), case
        assert not validator.is_valid(broken), case


@pytest.mark.parametrize("case", sorted(READER_ONLY))
def test_cross_field_rules_are_the_readers(case):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    manifest = golden_manifests()[0]
    broken = edited(manifest, READER_ONLY[case])
    assert not reader_accepts(broken)
    assert validator.is_valid(broken)  # documented as outside the schema's reach
