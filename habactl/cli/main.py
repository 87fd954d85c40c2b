"""Entry point: builds the app from the subcommand modules.

Importing a command module must stay cheap (typer only): heavy imports live inside the
command functions, so that --help, --version and inspect do not load torch.
"""

from __future__ import annotations

import importlib

import typer

from habactl import __version__
from habactl.cli.app import app
from habactl.runtime import distributed

# Each module registers its command on `app` when imported; a missing one is skipped
# so that partial checkouts still give a working CLI. (compress is one of app.py's
# LAZY_COMMANDS: its module is imported when it runs.)
COMMAND_MODULES = (
    "inspect_cmd",
    "verify",
    "expand",
    "preview",
    "evaluate",
    "experts",
    "import_cmd",
    "export",
    "prepare",
)

for _name in COMMAND_MODULES:
    try:
        importlib.import_module(f"habactl.cli.{_name}")
    except ModuleNotFoundError as error:
        if error.name != f"habactl.cli.{_name}":
            raise


def _version(value: bool) -> None:
    if value:
        typer.echo(f"habactl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Dataset compression by distillation into .haba archives."""
    if ctx.invoked_subcommand is None:
        # `habactl` alone: the help, and success (it is not a usage error).
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def main() -> None:
    # Under torchrun (WORLD_SIZE set) the command runs as one rank of a process group;
    # otherwise nothing distributed is imported (no torch for --help or inspect).
    if distributed.launched():
        distributed.launch(app)
    else:
        app()


if __name__ == "__main__":
    main()
