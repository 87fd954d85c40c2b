"""The typed manifest (Archive.info) says what the manifest's JSON says, for every golden
archive, and cannot be changed behind the reader's back."""

import dataclasses
from pathlib import Path

import pytest

from habactl.format import Manifest, open_archive

GOLDEN = sorted(
    (Path(__file__).resolve().parent.parent / "format" / "golden" / "v1").glob("*.haba")
)


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_info_matches_the_json(path):
    with open_archive(path) as archive:
        m, info = archive.manifest, archive.info
    assert info.json is m and info.format_version == m["format_version"]
    assert list(info.classes) == m["classes"]
    image = m["image"]
    assert info.image.shape == (image["channels"], image["height"], image["width"])
    assert info.bases.count == m["bases"]["count"] == sum(info.bases.per_class)
    assert list(info.bases.shape) == m["bases"]["shape"]
    assert info.label_kind == m["labels"]["kind"] and info.soft_labels == (
        info.label_kind == "soft"
    )
    assert info.pipeline_entries() == m["pipeline"]
    assert info.normalization.to_json() == m["normalization"]
    assert info.normalization.kind == m["normalization"]["kind"]
    assert list(info.normalization.mean) == m["normalization"].get("mean", [])
    assert info.training.learned_lr == m["training"]["learned_lr"]
    assert info.training.recommended.to_json() == m["training"]["recommended"]
    assert info.training.recommended.epochs == m["training"]["recommended"]["epochs"]
    prov = m["provenance"]
    assert (info.provenance.dataset, info.provenance.fingerprint) == (
        prov["dataset"]["name"],
        prov["dataset"]["fingerprint"],
    )
    assert (info.provenance.seed, info.provenance.created) == (prov["seed"], prov["created"])
    assert info.storage.ipc == m["storage"]["ipc"]
    assert info.content_digest == m["content_digest"]
    assert info.manifest_digest == m.get("manifest_digest")


def test_info_is_frozen_and_built_from_json_alone():
    with open_archive(GOLDEN[0]) as archive:
        info = archive.info
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.bases = None  # type: ignore[misc]
    assert Manifest.from_json(dict(info.json)) == info
