"""Option declarations that several commands share, as ``Annotated`` aliases.

A command lists its options as a table of aliases (``seed: Seed = 0``): the flag, its
help and its checks are written once here, the default where the command reads it.
Typer only: importing this module must stay cheap (see ``habactl.cli.main``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for every random choice.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Root = Annotated[Path | None, typer.Option("--root", help="Folder holding torchvision data sets.")]
