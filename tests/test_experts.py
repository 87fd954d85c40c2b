"""`habactl experts` and the experts buffer: index, resume, refusals of bad buffers."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.experts  # noqa: F401  (registers the command)
import habactl.cli.inspect_cmd  # noqa: F401  (a second command: the app stays a group)
from habactl.cli.app import app
from habactl.experts import ExpertBuffer, ExpertsError, ExpertSettings, FlatNet, train_experts
from habactl.runtime.atomic import OutputError
from helpers import tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ExpertSettings(experts=2, epochs=2, width=0.125, batch_size=32)


@pytest.fixture(scope="module")
def source():
    return tiny_mnist()


@pytest.fixture(scope="module")
def buffer(tmp_path_factory, source):
    folder = tmp_path_factory.mktemp("experts") / "buffer"
    train_experts(source, folder, TINY)
    return folder


def test_index_records_data_architecture_and_settings(buffer, source):
    index = json.loads((buffer / "index.json").read_text())
    assert index["kind"] == "habactl-experts" and index["library"].startswith("habactl ")
    assert index["dataset"]["fingerprint"] == source.fingerprint
    assert index["dataset"]["image"] == {"channels": 1, "height": 28, "width": 28}
    assert index["dataset"]["classes"] == ["0", "1", "2"]
    assert index["arch"] == {"name": "convnet", "width": 0.125, "norm": "instance"}
    training = index["training"]
    assert (training["epochs"], training["lr"], training["momentum"], training["batch_size"]) == (
        2,
        0.01,
        0.0,
        32,
    )
    assert training["augmentation"]["flip"] is False  # digits are not mirrored
    assert [e["file"] for e in index["experts"]] == [
        "expert-0000.safetensors",
        "expert-0001.safetensors",
    ]
    opened = ExpertBuffer(buffer)
    rows = opened.trajectory_rows(1, [0, 1, 2])
    assert rows.shape == (3, index["parameters"]["count"])
    assert not torch.equal(rows[0], rows[2])  # the expert learned something
    # No pickles anywhere: safetensors and JSON only.
    assert sorted(p.suffix for p in buffer.iterdir()) == [".json", ".safetensors", ".safetensors"]


def test_the_typed_index_says_what_index_json_says(buffer, tmp_path):
    raw = json.loads((buffer / "index.json").read_text())
    index = ExpertBuffer(buffer).index
    assert (index.arch.name, index.arch.width, index.arch.to_json()) == (
        "convnet",
        0.125,
        raw["arch"],
    )
    assert (index.training.epochs, index.training.lr) == (2, raw["training"]["lr"])
    assert (index.dataset.fingerprint, index.dataset.image) == (
        raw["dataset"]["fingerprint"],
        (1, 28, 28),
    )
    assert index.dataset.classes == ("0", "1", "2")
    assert index.parameters.count == raw["parameters"]["count"]
    assert [(e.file, e.sha256) for e in index.experts] == [
        (e["file"], e["sha256"]) for e in raw["experts"]
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        index.arch = None  # type: ignore[misc]
    # A field the typed view reads that is gone is one clear error, not a KeyError.
    del raw["training"]["lr"]
    shutil.copytree(buffer, tmp_path / "copy")
    (tmp_path / "copy" / "index.json").write_text(json.dumps(raw))
    with pytest.raises(ExpertsError, match=r"index.json is damaged \(no field 'lr'\)"):
        ExpertBuffer(tmp_path / "copy")


def test_the_library_refuses_the_folders_the_command_refuses(tmp_path, source):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    with pytest.raises(ExpertsError, match="not an experts buffer"):
        train_experts(source, folder, TINY)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder; give a folder"):
        train_experts(source, tmp_path / "file", TINY)
    with pytest.raises(OutputError, match="folder .*missing does not exist"):
        train_experts(source, tmp_path / "missing" / "buffer", TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents", "file"]
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]


def test_flat_parameters_round_trip(source):
    from habactl.nets import build_net

    net = build_net("convnet", 1, 28, 28, 3, width_mult=0.125)
    flat = FlatNet(net)
    vector = flat.flatten()
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(flat(vector, x), net(x), atol=1e-6)


def test_resume_skips_finished_experts_and_matches_an_uninterrupted_run(tmp_path, source, buffer):
    folder = tmp_path / "b"
    train_experts(source, folder, ExpertSettings(**{**TINY.__dict__, "experts": 1}))
    first = (folder / "expert-0000.safetensors").stat().st_mtime_ns
    reports = []
    train_experts(source, folder, TINY, progress=reports.append)
    assert (folder / "expert-0000.safetensors").stat().st_mtime_ns == first  # not retrained
    assert (reports[0].expert, reports[0].skipped, reports[0].loss) == (0, True, None)
    assert all(r.expert == 1 and not r.skipped for r in reports[1:])
    for name in ("expert-0000.safetensors", "expert-0001.safetensors"):
        assert (folder / name).read_bytes() == (buffer / name).read_bytes()
    # A half-written file (no index entry) never counts: it is trained again.
    index = json.loads((folder / "index.json").read_text())
    index["experts"] = index["experts"][:1]
    (folder / "index.json").write_text(json.dumps(index))
    (folder / "expert-0001.safetensors").write_bytes(b"torn")
    train_experts(source, folder, TINY)
    assert (folder / "expert-0001.safetensors").read_bytes() == (
        buffer / "expert-0001.safetensors"
    ).read_bytes()


def test_other_settings_in_the_same_folder_are_refused(tmp_path, source):
    folder = tmp_path / "b"
    train_experts(source, folder, ExpertSettings(**{**TINY.__dict__, "experts": 1, "epochs": 1}))
    result = CliRunner().invoke(
        app,
        [
            "experts",
            "digits",
            "-o",
            str(folder),
            "--epochs",
            "1",
            "--experts",
            "1",
            "--width",
            "0.125",
        ],
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "other settings" in lines[0] and "dataset" in lines[0]


def test_corrupt_trajectory_is_one_clear_error(tmp_path, source, buffer):
    folder = tmp_path / "copy"
    shutil.copytree(buffer, folder)
    path = folder / "expert-0000.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    opened = ExpertBuffer(folder)
    with pytest.raises(ExpertsError, match="expert-0000.safetensors is corrupt"):
        opened.trajectory_rows(0, [0])
    (folder / "index.json").write_text("{not json")
    with pytest.raises(ExpertsError, match="index.json cannot be read"):
        ExpertBuffer(folder)
    with pytest.raises(ExpertsError, match="no such folder"):
        ExpertBuffer(tmp_path / "nothing")
