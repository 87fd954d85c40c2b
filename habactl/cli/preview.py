"""`habactl preview`: a labelled PNG grid of bases (rows) and their hallucinations (columns)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from habactl.cli.app import app, examples_epilog, guarded
from habactl.errors import HabaError

# The largest grid drawn: 40 megapixels (120 MB as RGB) still opens in an image viewer.
# Checked before anything is decoded or allocated.
MAX_PIXELS = 40_000_000
# Without --scale, small images are zoomed until a cell is at least this wide/high.
AUTO_CELL = 80
PAD = 2
FONT_SIZE = 12
LABEL_LIMIT = 160  # px: longer class names are cut with an ellipsis
EXAMPLES = [
    "habactl preview mnist-5k.haba -o grid.png                # every basis that fits",
    "habactl preview mnist-5k.haba -o grid.png --per-class 2 --scale 4",
    "habactl preview digits.haba -o digits.png --force        # replace an earlier grid",
]


@dataclass(frozen=True)
class Layout:
    """Where everything goes in the picture (pixels)."""

    rows: int
    columns: int
    zoom: int
    cell: tuple[int, int]  # height, width of one zoomed image
    label_width: int
    header_height: int
    row_height: int
    column_width: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole picture."""
        width = self.label_width + PAD + self.columns * (self.column_width + PAD)
        height = self.header_height + PAD + self.rows * (self.row_height + PAD)
        return width, height

    def origin(self, row: int, column: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of the image in (row, column)."""
        x = self.label_width + PAD + column * (self.column_width + PAD)
        y = self.header_height + PAD + row * (self.row_height + PAD)
        return (
            x + (self.column_width - self.cell[1]) // 2,
            y + (self.row_height - self.cell[0]) // 2,
        )


def auto_zoom(height: int, width: int) -> int:
    return max(1, -(-AUTO_CELL // max(height, width)))


def plan(
    rows: int,
    columns: int,
    image: tuple[int, int],
    zoom: int,
    label_width: int,
    line_height: int,
    min_column: int,
) -> Layout:
    """Rows as tall as a cell or a line of text, columns as wide as a cell or the word
    ``basis`` (so that titles never overlap, even at --scale 1)."""
    cell = (image[0] * zoom, image[1] * zoom)
    return Layout(
        rows=rows,
        columns=columns,
        zoom=zoom,
        cell=cell,
        label_width=label_width,
        header_height=line_height + PAD,
        row_height=max(cell[0], line_height),
        column_width=max(cell[1], min_column),
    )


def column_titles(columns: int, fits: Any) -> list[str]:
    """``basis`` then ``hallucinator 1..K``; shortened where a cell is too narrow."""
    titles = ["basis"]
    for k in range(1, columns):
        for text in (f"hallucinator {k}", f"hall. {k}", f"{k}"):
            if fits(text) or text == f"{k}":
                titles.append(text)
                break
    return titles


def choose_rows(counts: list[int], per_class: int | None, budget_rows: int) -> int:
    """Bases shown per class: --per-class, or every basis when that fits, else as many as fit."""
    most = max(counts)
    if per_class is not None:
        return per_class
    fitting = most
    while fitting > 1 and sum(min(c, fitting) for c in counts) > budget_rows:
        fitting -= 1
    return fitting


@app.command(epilog=examples_epilog(EXAMPLES))
@guarded
def preview(
    archive: Path = typer.Argument(..., help="The .haba archive."),
    output: Path = typer.Option(..., "-o", "--output", help="PNG file to write (ends in .png)."),
    per_class: int | None = typer.Option(
        None,
        "--per-class",
        min=1,
        show_default="every basis that fits",
        help="Bases shown per class (rows).",
    ),
    scale: int = typer.Option(
        0,
        "--scale",
        min=0,
        help=f"Pixel zoom; 0 picks one that makes cells at least {AUTO_CELL} px.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Draw a PNG grid: one row per basis, its hallucinations in the columns.

    The first column is the basis decoded without hallucination (e.g. only
    upsampled), then hallucinator 1..K; each row is labelled with its class
    name. Without --per-class every basis is shown, as many per class as fit
    in a 40-megapixel picture.
    """
    from habactl.runtime.atomic import OutputError, check_file_target, write_bytes

    if output.suffix.lower() != ".png" and not output.is_dir():
        raise OutputError(f"{output}: preview writes a PNG; give a file name ending in .png")
    check_file_target(output, force, example=f"{archive.stem}.png")
    data = draw(archive, per_class, scale)
    write_bytes(output, data.png, overwrite=force)
    width, height = data.layout.size
    if data.note:
        print(f"note: {data.note}", file=sys.stderr)
    hallucinators = data.layout.columns - 1
    what = (
        f"basis + {hallucinators} hallucinator{'s' * (hallucinators != 1)}"
        if hallucinators
        else "basis"
    )
    print(
        f"wrote {output}: {data.layout.rows} bases × {data.layout.columns} columns ({what}), "
        f"{width}×{height} px",
        file=sys.stderr,
    )


@dataclass(frozen=True)
class Drawn:
    png: bytes
    layout: Layout
    titles: list[str]
    row_classes: list[str]
    note: str


def draw(archive: Path, per_class: int | None, scale: int) -> Drawn:
    """Decode the chosen bases, lay them out and return the PNG bytes."""
    import io
    import json

    import numpy as np
    import torch
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    from habactl.training.dataset import HabaDataset

    dataset = HabaDataset(archive)
    state = dataset._state()
    labels = state.labels if state.labels.dim() == 1 else state.labels.argmax(dim=1)
    counts = torch.bincount(labels, minlength=dataset.num_classes).tolist()
    columns = 1 + (dataset.expansion if dataset.expansion > 1 else 0)
    _, height, width = dataset.image_shape
    zoom = scale or auto_zoom(height, width)

    font, text_width, line_height = _font()
    names = [fit_text(name, text_width) for name in dataset.classes]
    label_width = max(text_width(n) for n in names) + 2 * PAD + 4

    # Bound the picture before decoding anything: rows follow from the budget.
    min_column = text_width("basis") + 4
    probe = plan(1, columns, (height, width), zoom, label_width, line_height, min_column)
    pixel_width = probe.size[0]
    row_pixels = pixel_width * (probe.row_height + PAD)
    budget_rows = max(1, (MAX_PIXELS - pixel_width * (probe.header_height + PAD)) // row_pixels)
    shown = choose_rows(counts, per_class, budget_rows)
    bases = torch.cat(
        [torch.nonzero(labels == c).flatten()[:shown] for c in range(dataset.num_classes)]
    )
    layout = plan(len(bases), columns, (height, width), zoom, label_width, line_height, min_column)
    total_width, total_height = layout.size
    if total_width * total_height > MAX_PIXELS:
        raise HabaError(
            f"the grid would be {total_width:,}×{total_height:,} pixels "
            f"({total_width * total_height / 1e6:,.0f} megapixels, the limit is "
            f"{MAX_PIXELS / 1e6:.0f}); lower --scale or --per-class"
        )
    note = ""
    if per_class is None and shown < max(counts):
        note = (
            f"showing {shown} of up to {max(counts)} bases per class, what fits in "
            f"{MAX_PIXELS / 1e6:.0f} megapixels; choose with --per-class"
        )

    with torch.no_grad():
        cells = [plain_decode(state.pipeline, state.bases[bases], state.classes[bases])]
        for variant in range(columns - 1):
            cells.append(dataset.fetch(bases * dataset.expansion + variant)[0])
    transform = dataset.test_transform()
    canvas = np.full((total_height, total_width, 3), 255, dtype=np.uint8)
    for column, images in enumerate(cells):
        pixels = (transform.to_pixels(images).clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).numpy()  # (N, H, W, C): small, not yet zoomed
        for row, image in enumerate(pixels):
            big = image.repeat(zoom, axis=0).repeat(zoom, axis=1)
            x, y = layout.origin(row, column)
            canvas[y : y + big.shape[0], x : x + big.shape[1]] = big  # grayscale broadcasts to RGB

    picture = Image.fromarray(canvas)
    titles = column_titles(columns, lambda text: text_width(text) <= layout.column_width)
    row_names = [names[int(labels[b])] for b in bases.tolist()]
    _label(ImageDraw.Draw(picture), layout, titles, row_names, font, text_width, line_height)
    row_classes = [dataset.classes[int(labels[b])] for b in bases.tolist()]

    # The labels again as text chunks, for programs (and tests) that read the grid.
    info = PngInfo()
    info.add_text("habactl:columns", json.dumps(titles))
    info.add_text("habactl:rows", json.dumps(row_classes, ensure_ascii=False))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    return Drawn(buffer.getvalue(), layout, titles, row_classes, note)


def _font() -> tuple[Any, Callable[[str], int], int]:
    """The labels' font, a text's width in pixels, and the height of a line."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=FONT_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> int:
        return int(measure.textlength(text, font=font))

    # load_default(size=...) gives a FreeType font whenever Pillow has FreeType, and the
    # older bitmap font otherwise, which has no metrics: fall back to its box.
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
    else:
        ascent, descent = FONT_SIZE, 0
    return font, text_width, ascent + descent + 2


def _label(
    pen: Any,
    layout: Layout,
    titles: list[str],
    row_names: list[str],
    font: Any,
    text_width: Callable[[str], int],
    line_height: int,
) -> None:
    """Write the column titles above the grid and each row's class name left of it."""
    for column, title in enumerate(titles):
        x = layout.label_width + PAD + column * (layout.column_width + PAD)
        x += max(0, (layout.column_width - text_width(title)) // 2)
        pen.text((x, 1), title, fill=(0, 0, 0), font=font)
    for row, name in enumerate(row_names):
        y = layout.header_height + PAD + row * (layout.row_height + PAD)
        y += (layout.row_height - line_height) // 2
        pen.text((PAD, y), name, fill=(0, 0, 0), font=font)


def fit_text(text: str, width_of: Any) -> str:
    """``text``, cut with an ellipsis to at most LABEL_LIMIT pixels."""
    if width_of(text) <= LABEL_LIMIT:
        return text
    while text and width_of(text + "…") > LABEL_LIMIT:
        text = text[:-1]
    return text + "…"


def plain_decode(pipeline: Any, bases: Any, classes: Any = None) -> Any:
    """The basis through every stage that does not expand (e.g. IDC upsampling) only;
    ``classes``: each basis' class, for a per-class stage (a per-class frequency mask)."""
    out = bases
    for stage in pipeline.stages:
        if stage.per_class:
            out = stage(out, None, classes=classes)
        elif stage.expansion == 1:
            out = stage(out)
    return out
