"""`habactl export`: an archive -> the files another codebase's evaluator reads."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from habactl.cli.app import app, guarded
from habactl.interop.registry import EXPORTERS

_KINDS = "; ".join(f"{name}: {line}" for name, (_, _, line) in EXPORTERS.items())

EXAMPLES = """Examples:

  habactl export a.haba --to dd-ranking -o for-ddranking/

  habactl export a.haba --to mtt -o mtt-run/

  habactl export a.haba --to imagefolder -o images/

Every (basis, hallucinator) pair is decoded; see docs/interop.md."""


@app.command("export", epilog=EXAMPLES)
@guarded
def export(
    archive: Path = typer.Argument(..., help="The .haba archive."),
    to: str = typer.Option(..., "--to", help=f"The layout. {_KINDS}."),
    output: Path = typer.Option(..., "-o", "--output", help="The folder to write (created)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
) -> None:
    """Write an archive's decoded images in the layout another tool expects."""
    from habactl.interop.registry import exporter

    written = exporter(to)(archive, output, force=force)
    shown = ", ".join(written[:4]) + (", ..." if len(written) > 4 else "")
    print(f"wrote {output}: {shown}", file=sys.stderr)
