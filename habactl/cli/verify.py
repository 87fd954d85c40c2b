"""`habactl verify`: check every digest and value; name the damaged part."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from habactl.cli.app import app, guarded


@app.command()
@guarded
def verify(archive: Path = typer.Argument(..., help="The .haba archive.")) -> None:
    """Exit 0 when the archive is intact, 1 (naming each damaged part) when not."""
    from habactl.format import verify_archive

    problems = verify_archive(archive)
    if problems:
        for problem in problems:
            print(f"habactl: error: {problem}", file=sys.stderr)
        raise typer.Exit(1)
    print(f"{archive}: intact", file=sys.stderr)
