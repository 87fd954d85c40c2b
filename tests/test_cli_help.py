"""What a new user sees: --help with examples and defaults, progress that fits and that
shows in a log file, plural words, and plain messages for files that are not archives."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app, plural
from habactl.cli.inspect_cmd import listing, summary
from habactl.distill.progress import ProgressLine, RichReporter, fit_line
from habactl.format import open_archive
from helpers import one_error_line

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "format" / "golden" / "v1"
runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)


def help_of(*command: str, columns: int = 200) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_every_command_is_listed_and_has_help():
    assert {"compress", "inspect", "verify", "expand", "preview", "evaluate", "experts"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples_of_the_command_and_no_bool_placeholder(command):
    text = help_of(command)
    assert "Examples:" in text
    examples = text[text.index("Examples:") :]
    assert f"habactl {command}" in examples
    assert "<bool>" not in text


def test_root_help_has_no_bool_placeholder_and_examples():
    text = help_of()
    assert "<bool>" not in text and "--version" in text and "Examples:" in text


def test_habactl_alone_prints_the_help_and_succeeds():
    result = runner.invoke(app, [])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout and "inspect" in result.stdout


def test_evaluate_help_cites_a_document_of_the_repository():
    text = help_of("evaluate")
    assert "METHOD.md" not in text
    cited = re.findall(r"docs/[a-z_]+\.md", text)
    assert cited and all((REPO / path).is_file() for path in cited)


@pytest.mark.parametrize("command", ["inspect", "verify", "evaluate"])
def test_every_option_that_takes_a_value_shows_its_default(command):
    click_command = typer.main.get_command(app).commands[command]
    ctx = typer.Context(click_command, info_name=command)
    for param in click_command.get_params(ctx):
        if param.param_type_name != "option" or getattr(param, "is_flag", False):
            continue
        record = param.get_help_record(ctx)
        assert record and "default" in record[1], (command, param.opts)


@pytest.mark.parametrize("command", COMMANDS)
def test_no_bracketed_default_is_eaten_by_rich_markup(command):
    # rich reads an unescaped "[default: x]" in a help string as markup and drops it,
    # leaving "text ." behind: every bracket in help text must be written as "\\[".
    text = " ".join(help_of(command).split())
    eaten = re.search(r".{0,40}\w \.(?=\s|$)", text)  # not " .haba", a file extension
    assert not eaten, eaten.group(0)


# --- progress ----------------------------------------------------------------------------


def plain_console() -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(file=stream, highlight=False, soft_wrap=True), stream


def test_progress_into_a_file_prints_a_line_every_few_percent():
    console, stream = plain_console()
    line = ProgressLine(console, unit="it")
    line.start(200, 0, "dm haba+idc")
    for i in range(1, 201):
        line.update(i, loss=f"loss {1 / i:.3g}")
    line.stop()
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 25  # every 5 %: not silent, not one line per iteration
    counts = [int(re.search(r"(\d+)/200 it", x).group(1)) for x in lines]
    assert counts == sorted(counts) and counts[-1] == 200
    assert all("ETA" in x and "loss" in x for x in lines)


def test_progress_into_a_file_is_silent_when_refused_before_any_work():
    console, stream = plain_console()
    with ProgressLine(console) as line:
        line.start(100, 0, "loading")
    assert stream.getvalue() == ""


@pytest.mark.parametrize("width", [120, 80, 60, 50, 40])
def test_progress_line_fits_the_terminal_and_keeps_count_and_eta(width):
    left, bar, right = fit_line(
        width,
        description="dm haba+idc",
        completed=150,
        total=1000,
        unit="it",
        elapsed=70.0,
        remaining=400.0,
        fields=["loss 0.1234", "2.13 it/s"],
    )
    shown = "  ".join(p for p in [left, "#" * bar, right] if p)
    assert len(shown) < width
    assert "150/1,000" in shown and "ETA 0:06:40" in shown
    if width >= 80:
        assert "0:01:10" in shown  # the elapsed time survives 80 columns


def test_live_progress_on_a_narrow_terminal_stays_on_one_line():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=50, highlight=False)
    reporter = RichReporter(
        console,
        [
            "[bold]mnist-5k[/]: HaBa + IDC, 10 classes, "
            "hallucinators with three hidden channels each"
        ],
    )
    reporter.start(10, 0, "dm haba+idc")
    for i in range(1, 11):
        reporter.update(i, {"loss": 0.5})
    reporter.close()
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", stream.getvalue())
    for row in re.split(r"[\r\n]", text):
        assert len(row) < 50, row
    # The header wraps between words: every word arrives whole.
    words = set(re.split(r"\s+", text))
    for word in ("hallucinators", "channels", "classes,"):
        assert word in words


def test_plural_words():
    assert plural(1, "expert") == "1 expert"
    assert plural(2, "expert") == "2 experts"
    assert plural(1000, "iteration") == "1,000 iterations"


def test_inspect_says_one_iteration_not_one_iterations():
    from habactl.format.view import Manifest

    manifest = open_archive(GOLDEN / "raw.haba").manifest
    manifest["provenance"]["iterations"] = 1
    rows = dict(summary(Manifest.from_json(manifest), 1))
    assert "1 iteration," in rows["objective"] and "iterations" not in rows["objective"]


# --- inspect for people ------------------------------------------------------------------


def test_inspect_shows_recipe_and_an_indented_hyperparameter_listing():
    result = runner.invoke(app, ["inspect", str(GOLDEN / "idc-haba.haba")], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    text = result.stdout
    assert "training recipe" in text and "epochs" in text and "augmentation" in text
    rows = listing(
        {
            "optimizer": {"name": "sgd", "momentum": 0.5},
            "augmentation": {"params": {"scale": 1.2, "rotate": 15.0}},
        }
    )
    assert [row.split() for row in rows] == [
        ["augmentation"],
        ["params", "scale", "1.2,", "rotate", "15"],
        ["optimizer"],
        ["momentum", "0.5"],
        ["name", "sgd"],
    ]
    # Sections indented under their heading, values of one section in one column.
    assert [len(row) - len(row.lstrip()) for row in rows] == [2, 4, 2, 4, 4]
    assert rows[3].index("0.5") == rows[4].index("sgd")
    assert not any("{" in row for row in rows)  # not one line of JSON


def test_long_hyperparameter_values_wrap_between_items():
    rows = listing({"per_class": list(range(100, 160))}, width=60)
    assert len(rows) > 1 and all(len(row) < 60 for row in rows)
    items = ", ".join(row.strip().removeprefix("per_class").strip() for row in rows)
    assert [int(x) for x in items.replace(",", " ").split()] == list(range(100, 160))


# --- files that are not archives ---------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "verify", "evaluate"])
def test_a_png_given_as_archive_is_called_not_an_archive(tmp_path, command):
    from PIL import Image

    picture = tmp_path / "digits.png"
    Image.new("RGB", (8, 8)).save(picture)
    result = runner.invoke(app, [command, str(picture)])
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "not a .haba archive" in line and "PNG" in line and "declares" not in line


def test_a_text_file_given_as_archive_is_called_not_an_archive(tmp_path):
    notes = tmp_path / "notes.haba"
    notes.write_text("these are my notes about distillation\n")
    result = runner.invoke(app, ["inspect", str(notes)])
    assert result.exit_code == 1 and "not a .haba archive" in one_error_line(result)


@pytest.mark.parametrize("command", ["inspect", "verify", "evaluate"])
def test_a_folder_given_as_archive_is_called_a_folder(tmp_path, command):
    folder = tmp_path / "results"
    folder.mkdir()
    result = runner.invoke(app, [command, str(folder)])
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "is a folder" in line and "no such" not in line
