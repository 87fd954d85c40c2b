"""`habactl preview`: a PNG grid of bases (rows) and their hallucinations (columns)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import typer

from habactl.atomic import atomic_path, check_target
from habactl.cli.app import app, guarded


def preview_rows(dataset, per_class: int) -> torch.Tensor:
    """Indices of the bases to show: the first `per_class` of every class."""
    labels = dataset._state().labels
    hard = labels if labels.dim() == 1 else labels.argmax(dim=1)
    rows = [torch.nonzero(hard == c).flatten()[:per_class] for c in range(dataset.num_classes)]
    return torch.cat(rows)


@app.command()
@guarded
def preview(
    archive: Path = typer.Argument(..., help="The .haba archive."),
    output: Path = typer.Option(..., "-o", "--output", help="PNG file to write."),
    per_class: int = typer.Option(1, "--per-class", min=1, help="Bases shown per class (rows)."),
    scale: int = typer.Option(0, "--scale", min=0,
                              help="Pixel zoom; 0 picks one that makes cells at least 64 px."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Draw a PNG grid: one row per basis, its hallucinations in the columns.

    The first column is the basis decoded without hallucination (e.g. only upsampled).
    """
    from PIL import Image
    from torchvision.utils import make_grid

    from habactl.loader import HabaDataset

    check_target(output, force)
    dataset = HabaDataset(archive)
    state = dataset._state()
    bases = preview_rows(dataset, per_class)
    columns = [plain_decode(state.pipeline, state.bases[bases])]
    # A raw or IDC archive has nothing to hallucinate: its one column is the decoded basis.
    for variant in range(dataset.expansion if dataset.expansion > 1 else 0):
        index = bases * dataset.expansion + variant
        columns.append(dataset.fetch(index)[0])
    cells = torch.stack(columns, dim=1).flatten(0, 1)
    pixels = dataset.test_transform().to_pixels(cells)
    zoom = scale or max(1, -(-64 // max(pixels.shape[-2:])))
    pixels = torch.nn.functional.interpolate(pixels, scale_factor=zoom, mode="nearest")
    grid = make_grid(pixels, nrow=len(columns), padding=2, pad_value=1.0)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with atomic_path(output) as temp:
        Image.fromarray(array).save(temp, format="PNG")
    print(f"wrote {output}: {len(bases)} bases × {len(columns)} columns", file=sys.stderr)


def plain_decode(pipeline, bases: torch.Tensor) -> torch.Tensor:
    """The basis through every stage that does not expand (e.g. IDC upsampling) only."""
    out = bases
    with torch.no_grad():
        for stage in pipeline.stages:
            if stage.expansion == 1:
                out = stage(out)
    return out
