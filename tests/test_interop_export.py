"""`habactl export` and round trips: import(export(A)) decodes to the images of A."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.format import open_archive, storage_account
from habactl.training.dataset import HabaDataset
from helpers import hallucinate_stage, one_error_line

runner = CliRunner()
UPSAMPLE = {"name": "upsample", "version": 1, "configuration": {"factor": 2, "mode": "bilinear"}}


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: object):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def haba_idc(make_archive) -> Path:
    """Half-resolution bases, upsampled, through 3 hallucinators; a learned lr."""
    return make_archive(
        "a.haba",
        shape=(1, 8, 8),
        classes=3,
        per_class=2,
        stages=[UPSAMPLE, hallucinate_stage(3)],
        learned_lr=0.02,
    )


def same_decoding(a: Path, b: Path) -> None:
    images_a, labels_a = HabaDataset(a).tensors()
    images_b, labels_b = HabaDataset(b).tensors()
    assert torch.equal(images_a, images_b)
    assert torch.equal(labels_a, labels_b)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def classes_of(path: Path) -> str:
    return ",".join(open_archive(path).manifest["classes"])


def import_back(kind: str, folder: Path, original: Path, out: Path) -> None:
    """Import an export of `original` again, telling it what the layout cannot record."""
    norm = ("--mean", "0.5", "--std", "0.25")
    ok("import", kind, folder, *norm, "--classes", classes_of(original), "-o", out)


def test_mtt_round_trip(tmp_path, haba_idc):
    folder = tmp_path / "mtt"
    ok("export", haba_idc, "--to", "mtt", "-o", folder)
    assert listing(folder) == ["images_best.pt", "labels_best.pt", "lr_best.pt"]
    images = torch.load(folder / "images_best.pt", weights_only=True)
    assert images.shape == (18, 1, 8, 8)
    assert float(torch.load(folder / "lr_best.pt", weights_only=True)) == pytest.approx(0.02)
    back = tmp_path / "back.haba"
    import_back("mtt", folder, haba_idc, back)
    same_decoding(haba_idc, back)
    with open_archive(back) as archive:
        m = archive.manifest
    assert m["training"]["learned_lr"] == pytest.approx(0.02)
    assert m["normalization"] == open_archive(haba_idc).manifest["normalization"]


def test_dd_ranking_export_notes_the_storage_equivalent_ipc(tmp_path, haba_idc):
    folder = tmp_path / "ddr"
    ok("export", haba_idc, "--to", "dd-ranking", "-o", folder)
    assert listing(folder) == ["habactl-export.json", "images.pt", "labels.pt", "lr.pt"]
    note = json.loads((folder / "habactl-export.json").read_text())
    manifest = open_archive(haba_idc).manifest
    account = storage_account(manifest)
    equivalent = account.stored_values / (3 * 64)
    assert note["storage_equivalent_ipc"] == pytest.approx(equivalent, abs=1e-4)
    assert note["ipc_for_random_baseline"] == int(equivalent) >= 1
    assert note["claimed_ipc"] == 2 and note["decoded_images"] == 18
    labels = torch.load(folder / "labels.pt", weights_only=True)
    assert torch.equal(labels, torch.arange(3).repeat_interleave(6))  # class-major
    back = tmp_path / "back.haba"
    import_back("dd-ranking", folder, haba_idc, back)
    same_decoding(haba_idc, back)


def test_imagefolder_export_is_what_expand_writes(tmp_path, haba_idc):
    ok("export", haba_idc, "--to", "imagefolder", "-o", tmp_path / "exported")
    ok("expand", haba_idc, "-o", tmp_path / "expanded")
    exported = sorted(
        p.relative_to(tmp_path / "exported") for p in (tmp_path / "exported").rglob("*.png")
    )
    expanded = sorted(
        p.relative_to(tmp_path / "expanded") for p in (tmp_path / "expanded").rglob("*.png")
    )
    assert exported == expanded and len(exported) == 18
    for name in exported:
        assert (tmp_path / "exported" / name).read_bytes() == (
            tmp_path / "expanded" / name
        ).read_bytes()


def test_soft_labels_survive_the_round_trip(tmp_path):
    golden = Path(__file__).parents[1] / "format" / "golden" / "v1" / "rgb-pixel-affine-soft.haba"
    folder = tmp_path / "mtt"
    ok("export", golden, "--to", "mtt", "-o", folder)
    back = tmp_path / "back.haba"
    ok(
        "import",
        "mtt",
        folder,
        "--classes",
        classes_of(golden),
        "--mean",
        "0.49,0.48,0.45",
        "--std",
        "0.25,0.24,0.26",
        "-o",
        back,
    )
    same_decoding(golden, back)  # non-negative soft labels are kept as stored


def test_export_keeps_an_existing_folder_and_refuses_unknown_kinds(tmp_path, haba_idc):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    for force in ((), ("--force",)):
        line = one_error_line(run("export", haba_idc, "--to", "mtt", "-o", folder, *force))
        assert "never replaced" in line and (folder / "mine.txt").read_text() == "keep"
    ok("export", haba_idc, "--to", "mtt", "-o", tmp_path / "new")
    line = one_error_line(run("export", haba_idc, "--to", "mtt", "-o", tmp_path / "new"))
    assert "--force" in line
    ok("export", haba_idc, "--to", "mtt", "-o", tmp_path / "new", "--force")
    line = one_error_line(run("export", haba_idc, "--to", "tfrecord", "-o", tmp_path / "x"))
    assert "tfrecord" in line and "dd-ranking" in line
    assert not (tmp_path / "x").exists()
