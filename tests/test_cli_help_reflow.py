"""--help text flows to the terminal's width: no sentence cut where the source broke a line.

Docstrings and option help are written at the source's line width; what a user reads must
be wrapped by the terminal instead, at 80 columns as at 120. Lists and example lines keep
one item a line.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app, reflow

runner = CliRunner()
COMMANDS = [(), ("compress",), ("evaluate",), ("verify",), ("inspect",)]
WIDTHS = [80, 120]
# What typer prints after an option's help as an item of its own, on a line of its own
# when the help fills its cell: not a wrapped sentence.
OWN_ITEM = re.compile(r"\[(default|required|env var)")


def help_of(command: tuple[str, ...], columns: int) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def text_paragraphs(text: str) -> list[list[str]]:
    """The text outside the panels, as paragraphs of printed lines (padding stripped, an
    indentation of the text kept)."""
    paragraphs: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() and line.lstrip()[0] not in "╭│╰":
            paragraphs[-1].append(line[1:].rstrip())
        elif paragraphs[-1]:
            paragraphs.append([])
    # Not prose: the usage line and the examples block (one command a line).
    return [p for p in paragraphs if p and not p[0].startswith(("Usage:", "Examples:"))]


def panel_cells(text: str) -> list[tuple[list[str], int]]:
    """Each panel cell's description as printed lines, with the cell's width."""
    cells: list[tuple[list[str], int]] = []
    start = None
    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith("╭"):
            start = None
            continue
        if not line.startswith("│"):
            continue
        inner = line[1:-1].rstrip()  # between the borders
        if start is None:  # the first row: its description follows the last wide gap
            start = 1 + [m.end() for m in re.finditer(r"\S  +(?=\S)", inner)][-1]
        width = len(line) - 2 - start  # up to the padding before the right border
        cell = line[start:-1].strip()
        if line[1:start].strip() or not cells:
            cells.append(([cell], width))
        elif cell:
            cells[-1][0].append(cell)
    return cells


def assert_filled(lines: list[str], width: int, where: str) -> None:
    """Each line was wrapped because the next word did not fit, not at a source break."""
    for line, following in zip(lines, lines[1:], strict=False):
        if OWN_ITEM.match(following):
            continue
        word = following.split()[0]
        assert len(line) + 1 + len(word) > width, f"{where}: {line!r} / {following!r}"


@pytest.mark.parametrize("columns", WIDTHS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "habactl")
def test_help_lines_are_filled_to_the_terminal_width(command, columns):
    text = help_of(command, columns)
    where = f"habactl {' '.join(command)} --help at {columns}"
    paragraphs = text_paragraphs(text)
    assert paragraphs, text  # every one of these commands has a description
    for paragraph in paragraphs:
        assert_filled(paragraph, columns - 2, where)  # one space of padding each side
    cells = panel_cells(text)
    assert cells
    for lines, width in cells:
        assert_filled(lines, width, where)


def test_sentences_broken_in_the_source_read_on_one_line_at_120_columns():
    listing = help_of((), 120)
    assert "(default: HaBa + distribution matching on mnist-5k, IPC 1)." in listing
    assert "storage account, training recipe and provenance (reads" in listing
    paragraphs = text_paragraphs(help_of(("evaluate",), 120))
    protocol = " ".join(line.strip() for paragraph in paragraphs for line in paragraph)
    assert (
        "SGD momentum 0.9, weight decay 5e-4, batch 256, lr × 0.1 at half, DSA augmentation, "
        "final-epoch accuracy, mean ± std over models." in protocol
    )


@pytest.mark.parametrize("columns", WIDTHS)
def test_examples_keep_one_command_a_line(columns):
    lines = help_of(("inspect",), columns).splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    assert lines[first + 1].strip().startswith("habactl inspect mnist-5k.haba ")
    assert lines[first + 2].strip().startswith("habactl inspect mnist-5k.haba --json")


def test_reflow_joins_prose_and_keeps_lists_examples_and_blank_lines():
    source = (
        "A sentence written\nover two lines.\n\n"
        "Choose:\n- one item\n  continued\n- another\n1. numbered\n\n"
        "Examples:\n  habactl a\n  habactl b\nExit status: 0.\n\n"
        "\bkept\nas is"
    )
    assert reflow(source) == (
        "A sentence written over two lines.\n\n"
        "Choose:\n- one item continued\n- another\n1. numbered\n\n"
        "Examples:\n  habactl a\n  habactl b\nExit status: 0.\n\n"
        "\bkept\nas is"
    )
    assert reflow(reflow(source)) == reflow(source)
    # In an option's help typer joins every line unless the paragraph is marked.
    assert reflow("Pick:\n- a\n- b", mark_blocks=True) == "\b\nPick:\n- a\n- b"
    assert reflow("one\nsentence", mark_blocks=True) == "one sentence"
    assert reflow(None) is None and reflow("") == ""
