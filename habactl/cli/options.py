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

# The options of the commands that train a network on the real data (experts, teacher).
Width = Annotated[
    float, typer.Option("--width", help="Width multiplier of the network (1.0: 128 channels).")
]
Augment = Annotated[
    str, typer.Option("--augment", help="DSA ops joined by _ (no flip on digit data), or none.")
]
Threads = Annotated[
    int,
    typer.Option(
        "--threads",
        min=0,
        help="CPU threads for torch (0: torch's default). On a CPU busy with other work, "
        "1 is often much faster.",
    ),
]
