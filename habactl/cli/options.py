"""Option declarations that several commands share, as ``Annotated`` aliases.

A command lists its options as a table of aliases (``seed: Seed = 0``): the flag and its
checks are written once here, the default where the command reads it. Their help is
compress's, read from where compress declares them (``habactl.distill.config``), so the
same option reads the same in every command. Typer and the standard library only:
importing this module must stay cheap (see ``habactl.cli.main``).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from habactl.distill.config import DistillConfig, RunSettings


def _help(settings: type, name: str) -> str:
    return str(next(f.metadata["help"] for f in fields(settings) if f.name == name))


Quiet = Annotated[bool, typer.Option("-q", "--quiet", help=_help(RunSettings, "quiet"))]
Seed = Annotated[int, typer.Option("--seed", help=_help(DistillConfig, "seed"))]
Device = Annotated[str, typer.Option("--device", help=_help(DistillConfig, "device"))]
Root = Annotated[Path | None, typer.Option("--root", help=_help(RunSettings, "root"))]
