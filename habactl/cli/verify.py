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
    from habactl.format import verify_report

    report = verify_report(archive)
    if report.problems:
        from habactl.cli.teacher_view import verify_teacher

        if verify_teacher(archive):  # a teacher file, said so (or one line if damaged)
            return
        for problem in report.problems:
            print(f"habactl: error: {problem}", file=sys.stderr)
        raise typer.Exit(1)
    if report.manifest_checked:
        print(f"{archive}: intact", file=sys.stderr)
    else:  # 1.0 and 1.1 archives: only the tensors carry digests
        print(
            f"{archive}: intact (tensors); format {report.format_version} carries no manifest "
            "digest, so the manifest itself is not checked",
            file=sys.stderr,
        )
