"""The typer application and what every subcommand shares: consoles, help, error policy.

Start-up matters here: every command imports this module, so it imports typer and rich
only. Anything heavier (torch, numpy, the data sources) is imported inside the command
functions, so that `habactl --help`, `--version` and `inspect` answer at once.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from habactl.errors import HabaError
from habactl.runtime.distributed import JobError  # cheap: torch is imported only for a job

# Shown under each command's --help. A command may pass its own `epilog` instead.
EXAMPLES: dict[str, list[str]] = {
    "compress": [
        "habactl compress                              # embedded mnist-5k -> mnist-5k.haba",
        "habactl compress digits --objective random --ipc 10 -o digits.haba",
        "habactl compress data.npz --codec haba+idc --ipc 1 -o small.haba",
        "habactl compress --config config.toml          # settings from a file, flags override",
        "habactl compress --objective rded --teacher t.safetensors --labels top-k:3",
    ],
    "inspect": [
        "habactl inspect mnist-5k.haba                 # header only, nothing decoded",
        "habactl inspect mnist-5k.haba --json | jq .manifest.training",
    ],
    "verify": [
        "habactl verify mnist-5k.haba && echo intact   # exit 1 names each damaged part",
    ],
    "expand": [
        "habactl expand mnist-5k.haba -o images/        # class folders of PNGs",
        "habactl expand mnist-5k.haba -o images.npz     # or .h5",
    ],
    "preview": [
        "habactl preview mnist-5k.haba -o grid.png",
        "habactl preview mnist-5k.haba -o grid.png --per-class 2",
    ],
    "evaluate": [
        "habactl evaluate mnist-5k.haba --fast          # a few minutes on 2 cores",
        "habactl evaluate mnist-5k.haba --arch convnet,resnet18 --baseline random --json",
    ],
    "experts": [
        "habactl experts digits -o experts/ --experts 5 --epochs 20",
        "habactl compress digits --objective mtt --experts experts/",
    ],
    "import": [
        "habactl import mtt images_best.pt labels_best.pt --dataset cifar10 -o mtt.haba",
        "habactl import npz mine.npz --classes cat,dog --ipc 10 -o mine.haba",
    ],
    "export": [
        "habactl export mnist-5k.haba --to dd-ranking -o ddr/",
    ],
}


# The last line of every epilog. Unindented on purpose: typer dedents the epilog by the
# smallest indentation of its lines, and the examples above it keep theirs.
EXIT_LINE = "Exit status: 0 success, 1 error (one line on stderr), 2 usage error."


def examples_epilog(lines: list[str]) -> str:
    """An epilog of indented example lines, as HabaCommand shows them."""
    return "\n".join(["Examples:", *(f"  {line}" for line in lines), EXIT_LINE])


# A line that starts a list item: "- x", "* x", "• x", "1. x", "2) x" (any indentation).
_ITEM = re.compile(r"\s*(?:[-*•]|\d+[.)])\s")


def _reflow_paragraph(paragraph: str) -> list[str]:
    """The paragraph's lines once its prose is joined: a source line break inside a
    sentence goes, so that the terminal wraps the text at its own width.

    A plain line continues the prose line before it. A list item ("- ", "1. ") starts a
    new line, and an indented line under it continues it. Any other indented line (an
    example, a command to type) stays as it is, and so does a paragraph that starts with
    click's no-rewrap marker ``\\b``.
    """
    if paragraph.startswith("\b"):
        return paragraph.split("\n")
    lines: list[str] = []
    kinds: list[str] = []  # "prose", "item" or "verbatim", one per line in `lines`
    for line in paragraph.split("\n"):
        if not line.strip():
            continue
        indent = _indent(line)
        if _ITEM.match(line):
            lines.append(line.rstrip())
            kinds.append("item")
        elif indent and kinds and kinds[-1] == "item" and indent > _indent(lines[-1]):
            lines[-1] += " " + line.strip()
        elif indent:
            lines.append(line.rstrip())
            kinds.append("verbatim")
        elif kinds and kinds[-1] == "prose":
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.rstrip())
            kinds.append("prose")
    return lines


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def reflow(text: str | None, *, mark_blocks: bool = False) -> str | None:
    """`text` with each prose paragraph on one line; blank lines still separate paragraphs.

    `mark_blocks`: prefix a paragraph that keeps several lines (a list, examples) with
    ``\\b``, which typer reads in an option's help as "keep these line breaks" (it joins
    the lines of every other paragraph there).
    """
    if not text:
        return text
    paragraphs = []
    for paragraph in text.split("\n\n"):
        lines = _reflow_paragraph(paragraph)
        if mark_blocks and len(lines) > 1 and not lines[0].startswith("\b"):
            lines.insert(0, "\b")
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _reflow_help(command: Any) -> None:
    """Reflow a command's help, short help, epilog and every parameter's help.

    Docstrings break their lines at the source's width; typer keeps those breaks in the
    description and in the list of commands, so `--help` showed sentences cut mid-way.
    """
    command.help = reflow(command.help)
    command.short_help = reflow(command.short_help)
    command.epilog = reflow(command.epilog)
    for param in command.params:
        if getattr(param, "help", None):
            param.help = reflow(param.help, mark_blocks=True)


def _tidy_params(command: Any, ctx: Any) -> None:
    for param in command.get_params(ctx):
        if param.metavar is not None:
            continue
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""  # a flag takes no value: no `<bool>` placeholder
        elif isinstance(param, TyperArgument) and param.name:
            param.metavar = param.name.upper()


class HabaCommand(TyperCommand):
    """A command whose --help reflows its text to the terminal, shows no value placeholder
    on flags and ends with examples."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _reflow_help(self)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _tidy_params(self, ctx)
        if self.epilog is None and self.name in EXAMPLES:
            self.epilog = reflow(examples_epilog(EXAMPLES[self.name]))
        super().format_help(ctx, formatter)


class HabaGroup(TyperGroup):
    """The root command, with the same tidy, reflowed --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _reflow_help(self)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _tidy_params(self, ctx)
        super().format_help(ctx, formatter)


# Commands built only when they run or show their help: compress generates its flags from
# the objectives' and stages' declarations, which import torch, and `habactl --help` must
# not. Name -> (module, its one-line help); the module's `command()` builds the command.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "compress": (
        "habactl.cli.compress",
        "Compress DATA into a .haba archive (default: HaBa + distribution matching on "
        "mnist-5k, IPC 1).",
    ),
    "relabel": (
        "habactl.cli.relabel",
        "Recompute an archive's soft labels with a teacher, stored as float32, float16, "
        "uint8 or top-k.",
    ),
    "teacher": (
        "habactl.cli.teacher",
        "Train a teacher network (batch norm) on DATA for the teacher-driven objectives.",
    ),
}


class LazyCommand(HabaCommand):
    """Stands for a command of LAZY_COMMANDS in the list of commands (the root's help
    reads its one line); whatever runs it, or asks for its help or completions, makes a
    context of the real command, built from its module then."""

    def load(self) -> Any:
        module = importlib.import_module(LAZY_COMMANDS[str(self.name)][0])
        return module.command()

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        return self.load().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        return ctx.command.invoke(ctx)  # the real command's context (make_context)


class HabaTyper(typer.Typer):
    """typer.Typer whose commands are HabaCommand unless a command asks otherwise."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or HabaCommand, **kwargs)


app = HabaTyper(
    name="habactl",
    help=(
        "Dataset compression by distillation: turn a data set into a small, versioned "
        ".haba archive of bases and hallucinators, and train on it as a torch Dataset."
    ),
    cls=HabaGroup,
    epilog=examples_epilog(
        [
            "habactl compress && habactl inspect mnist-5k.haba",
            "habactl evaluate mnist-5k.haba --fast",
            "habactl COMMAND --help                         # each command's options",
        ]
    ),
    # `habactl` alone prints this help and exits 0 (the root callback does it):
    # typer's no_args_is_help exits 2, as for a usage error.
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for _name, (_, _help) in LAZY_COMMANDS.items():
    app.command(_name, cls=LazyCommand, help=_help)(lambda: None)

# Machine output (--json) goes to stdout; everything for humans goes to stderr.
stdout = Console(soft_wrap=True, highlight=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

DEBUG_VARIABLE = "HABACTL_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 expert`, `2 experts`, `1,000 iterations` (thousands separated)."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def fail(message: str, code: int = 1, *, every_rank: bool = False) -> typer.Exit:
    """Print one line on stderr and return the exit to raise. `every_rank`: the error is
    raised by every rank of a torchrun job alike, so rank 0 alone prints it."""
    if "WORLD_SIZE" in os.environ:  # under torchrun: the first failing rank prints, named
        from habactl.runtime import distributed

        distributed.print_error(message, every_rank=every_rank)
        return typer.Exit(code)
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
            every_rank = isinstance(error, JobError)
            raise fail(str(error).replace("\n", " "), every_rank=every_rank) from None
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            print("habactl: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
