"""`habactl preview`: what is in each cell, the labels, which bases, the size bound."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
import habactl.cli.preview as preview
from habactl.cli.app import app
from habactl.training.dataset import HabaDataset
from helpers import hallucinate_stage


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("habactl: error: "), result.stderr
    return lines[0]


def expected_cells(archive, bases: list[int]) -> list[list[np.ndarray]]:
    """Per row, per column the (H, W, 3) uint8 image the grid should hold, unzoomed."""
    dataset = HabaDataset(archive)
    index = torch.tensor(bases)
    state = dataset._state()
    columns = [preview.plain_decode(state.pipeline, state.bases[index])]
    columns += [dataset.fetch(index * dataset.expansion + k)[0] for k in range(dataset.expansion)]
    out = []
    for images in columns:
        pixels = (dataset.test_transform().to_pixels(images).clamp(0, 1) * 255).round()
        array = pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out.append(np.broadcast_to(array, (*array.shape[:3], 3)))
    return [[column[r] for column in out] for r in range(len(bases))]


@pytest.fixture
def archive(make_archive):
    # Images as small as sklearn's digits (8x8), 3 classes × 2 bases, 3 hallucinators.
    return make_archive("p.haba", stages=[hallucinate_stage(count=3)], classes=3, per_class=2)


def test_every_cell_holds_its_basis_or_hallucination_scaled_up(tmp_path, archive):
    grid = tmp_path / "grid.png"
    result = run("preview", archive, "-o", grid)
    assert result.exit_code == 0, result.output
    drawn = preview.draw(archive, None, 0)
    layout = drawn.layout
    assert layout.cell[0] >= 64 and layout.cell[1] >= 64  # 8x8 images made visible
    picture = np.asarray(Image.open(grid).convert("RGB"))
    assert (picture.shape[1], picture.shape[0]) == layout.size
    expected = expected_cells(archive, list(range(6)))  # every basis, in class order
    for row, cells in enumerate(expected):
        for column, image in enumerate(cells):
            x, y = layout.origin(row, column)
            crop = picture[y : y + layout.cell[0], x : x + layout.cell[1]]
            big = image.repeat(layout.zoom, axis=0).repeat(layout.zoom, axis=1)
            assert np.array_equal(crop, big), (row, column)
    # The hallucinations differ from each other: the columns are not copies.
    assert not np.array_equal(expected[0][1], expected[0][2])


def test_rows_carry_class_names_and_a_header_row(tmp_path, archive):
    grid = tmp_path / "grid.png"
    assert run("preview", archive, "-o", grid).exit_code == 0
    with Image.open(grid) as opened:
        rows = json.loads(opened.text["habactl:rows"])
        columns = json.loads(opened.text["habactl:columns"])
        picture = np.asarray(opened.convert("L"))
    assert rows == ["class-0", "class-0", "class-1", "class-1", "class-2", "class-2"]
    assert columns == ["basis", "hallucinator 1", "hallucinator 2", "hallucinator 3"]
    layout = preview.draw(archive, None, 0).layout
    # Ink in the header band above every column and in the label band left of every row.
    for column in range(layout.columns):
        x, _ = layout.origin(0, column)
        assert (picture[: layout.header_height, x : x + layout.cell[1]] < 128).any()
    labels = []
    for row in range(layout.rows):
        _, y = layout.origin(row, 0)
        band = picture[y : y + layout.cell[0], : layout.label_width]
        assert (band < 128).any()
        labels.append(band)
    assert np.array_equal(labels[0], labels[1])  # same class, same label
    assert not np.array_equal(labels[0], labels[2])  # another class, another label


def test_per_class_chooses_the_rows(tmp_path, archive):
    grid = tmp_path / "one.png"
    assert run("preview", archive, "-o", grid, "--per-class", "1", "--scale", "3").exit_code == 0
    with Image.open(grid) as opened:
        assert json.loads(opened.text["habactl:rows"]) == ["class-0", "class-1", "class-2"]
    drawn = preview.draw(archive, 1, 3)
    picture = np.asarray(Image.open(grid).convert("RGB"))
    x, y = drawn.layout.origin(1, 0)
    want = expected_cells(archive, [2])[0][0].repeat(3, axis=0).repeat(3, axis=1)
    assert np.array_equal(picture[y : y + 24, x : x + 24], want)  # row 2 is class-1's first basis


def test_a_huge_grid_is_refused_before_anything_is_decoded(tmp_path, archive, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(HabaDataset, "fetch", no_decoding)
    monkeypatch.setattr(preview, "plain_decode", no_decoding)
    line = error_line(
        run("preview", archive, "-o", tmp_path / "g.png", "--per-class", "100", "--scale", "1000")
    )
    assert "megapixels" in line and "--scale" in line
    assert not (tmp_path / "g.png").exists()


def test_without_per_class_as_many_bases_as_fit_are_shown(tmp_path, make_archive, monkeypatch):
    archive = make_archive("many.haba", classes=3, per_class=10)
    monkeypatch.setattr(preview, "MAX_PIXELS", 30_000)
    result = run("preview", archive, "-o", tmp_path / "g.png", "--scale", "4")
    assert result.exit_code == 0, result.output
    assert "choose with --per-class" in result.stderr
    with Image.open(tmp_path / "g.png") as opened:
        rows = json.loads(opened.text["habactl:rows"])
        assert opened.size[0] * opened.size[1] <= 30_000
    shown = rows.count("class-0")
    assert 1 <= shown < 10 and rows == [f"class-{c}" for c in range(3) for _ in range(shown)]
    # Asking for more than fits is an error, not a silent cut.
    line = error_line(
        run("preview", archive, "-o", tmp_path / "h.png", "--scale", "4", "--per-class", "10")
    )
    assert "megapixels" in line


def test_raw_archive_has_one_basis_column(tmp_path, make_archive):
    archive = make_archive("raw.haba", classes=3, per_class=1)
    assert run("preview", archive, "-o", tmp_path / "g.png").exit_code == 0
    with Image.open(tmp_path / "g.png") as opened:
        assert json.loads(opened.text["habactl:columns"]) == ["basis"]
