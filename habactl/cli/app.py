"""The typer application and what every subcommand shares: consoles and error policy."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from habactl.errors import HabaError

app = typer.Typer(
    name="habactl",
    help=(
        "Dataset compression by distillation: turn a data set into a small, versioned "
        ".haba archive of bases and hallucinators, and train on it as a torch Dataset."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Machine output (--json) goes to stdout; everything for humans goes to stderr.
stdout = Console(soft_wrap=True, highlight=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

DEBUG_VARIABLE = "HABACTL_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one line on stderr and return the exit to raise."""
    # Plain print, not rich: the message must stay one line whatever the terminal width.
    print(f"habactl: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def guarded(command: F) -> F:
    """Turn known errors into one stderr line and exit 1; tracebacks only in debug mode."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except HabaError as error:
            if debug_enabled():
                raise
            raise fail(str(error).replace("\n", " ")) from None
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            print("habactl: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
