"""`habactl expand`: write the full expanded data set as PNG folders, HDF5 or npz."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from habactl.cli.app import app, examples_epilog, guarded

EXAMPLES = [
    "habactl expand digits.haba -o digits-images       # class folders of PNGs",
    "habactl expand digits.haba -o digits.npz --pixels  # [0, 1] pixels, not normalised",
    "habactl expand digits.haba -o digits.h5 --force    # replace an earlier output",
]


@app.command(epilog=examples_epilog(EXAMPLES))
@guarded
def expand(
    archive: Path = typer.Argument(..., help="The .haba archive."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="A folder (class folders of PNGs), a .h5/.hdf5 or a .npz file."
    ),
    pixels: bool = typer.Option(
        False,
        "--pixels",
        help="h5/npz: store [0,1] pixels instead of the normalised training values.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier output (a folder only if habactl wrote it)."
    ),
) -> None:
    """Decode every (basis, hallucinator) pair and write the result.

    An existing folder is replaced (with --force) only if habactl wrote
    it or it is empty; a folder holding other files is never deleted.
    """
    from habactl.interop.expand import expand_archive

    # It checks the output before decoding anything: a refusal costs nothing.
    result = expand_archive(archive, output, pixels=pixels, force=force)
    print(f"wrote {result.images:,} images to {result.path}", file=sys.stderr)
