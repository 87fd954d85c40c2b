"""`habactl inspect`: what an archive holds, from its header alone.

Torch-free and numpy-free: it reads the JSON header, so it answers at once.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from habactl.cli.app import app, guarded, plural, stdout

if TYPE_CHECKING:
    from habactl.format.account import StorageAccount
    from habactl.format.view import Manifest, Storage

# Width of the key column of the listings, and of a listing's lines (before the console
# narrows it).
KEY_WIDTH = 14
MAX_WIDTH = 100


def describe_stage(stage: Mapping[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in sorted(stage["configuration"].items()))
    return f"{stage['name']}({settings})"


def summary(manifest: Manifest, expansion: int) -> list[tuple[str, str]]:
    """(key, value) rows of the archive's one-screen summary."""
    from habactl.format.manifest import FORMAT_NAME

    image, bases, prov = manifest.image, manifest.bases, manifest.provenance
    per_class = sorted(set(bases.per_class))
    per_class_text = (
        str(per_class[0]) if len(per_class) == 1 else f"{min(per_class)}–{max(per_class)}"
    )
    pipeline = " → ".join(describe_stage(s) for s in manifest.pipeline) or "none (raw images)"
    classes = manifest.classes
    return [
        ("format", f"{FORMAT_NAME} {manifest.format_version}"),
        ("data set", f"{prov.dataset}  ({prov.fingerprint[:23]}…)"),
        (
            "classes",
            f"{len(classes)}: {', '.join(classes[:10])}" + (" …" if len(classes) > 10 else ""),
        ),
        ("image", f"{image.channels}×{image.height}×{image.width}"),
        (
            "bases",
            f"{bases.count:,} ({per_class_text} per class) at "
            + "×".join(str(s) for s in bases.shape),
        ),
        ("pipeline", pipeline),
        ("expands to", plural(bases.count * expansion, "training image")),
        ("labels", label_text(manifest)),
        ("normalisation", manifest.normalization.kind),
        (
            "objective",
            f"{prov.objective}, {plural(prov.iterations, 'iteration')}, seed {prov.seed}",
        ),
        ("made by", f"{prov.library} at {prov.created}"),
    ] + ([("labelled by", teacher_text(prov.teacher))] if prov.teacher else [])


def label_text(manifest: Manifest) -> str:
    """``hard``, or ``soft`` and how the rows are stored (format 1.3 forms), and the
    per-crop labels (1.4) when there are some."""
    if manifest.label_kind != "soft":
        return manifest.label_kind
    if manifest.label_form == "top-k":
        text = f"soft, top-{manifest.label_k} as float16 (the rest spread evenly)"
    else:
        text = f"soft, {manifest.label_form}"
    if manifest.crop_epochs is not None:
        text += f"; per basis and per crop ({manifest.crop_epochs} epochs of views)"
    return text


def teacher_text(teacher: Mapping[str, Any]) -> str:
    return (
        f"teacher {teacher['name']} ({teacher['arch']}, sha256 {str(teacher['sha256'])[:12]}…), "
        f"temperature {float(teacher['temperature']):g}"
    )


def size_text(nbytes: int) -> str:
    """Bytes for people: 512 B, 2.1 KB, 3.4 MB (powers of 1000)."""
    if nbytes < 1000:
        return f"{nbytes} B"
    value = float(nbytes)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def labels_line(account: StorageAccount) -> str:
    """The labels' bytes against the images' (bases + hallucinators) bytes."""
    part = account.parts["labels"]
    counted = "counted" if part.counted else "not counted: hard labels are implied"
    return (
        f"labels {size_text(part.bytes)} ({account.labels_to_images:.2f}× the images, "
        f"{size_text(account.images_bytes)}; {counted})"
    )


def teacher_line(account: StorageAccount, teacher_bytes: int) -> str:
    """What training on the archive needs beyond its own bytes: the teacher of an online
    distillation recipe, counted against the budget like every stored byte."""
    total = account.counted_bytes + teacher_bytes
    ratio = total / account.budget_bytes if account.budget_bytes else float("inf")
    return (
        f"with the teacher its recipe needs to train ({size_text(teacher_bytes)}): "
        f"{size_text(total)}, {ratio:,.1f}× the budget"
    )


def labels_json(info: Manifest, account: StorageAccount) -> dict[str, Any]:
    """inspect --json's ``labels``: the form, and its bytes beside the images'."""
    return {
        "kind": info.label_kind,
        "form": info.label_form,
        "k": info.label_k,
        "crop_epochs": info.crop_epochs,
        "bytes": account.parts["labels"].bytes,
        "counted": account.parts["labels"].counted,
        "images_bytes": account.images_bytes,
        "to_images": account.labels_to_images,
        "teacher": None if info.provenance.teacher is None else dict(info.provenance.teacher),
    }


def account_table(account: StorageAccount, storage: Storage) -> Any:
    from rich.table import Table

    table = Table(title="storage account", title_justify="left", show_edge=False)
    table.add_column("part")
    table.add_column("values", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("counted")
    for name, part in account.parts.items():
        if part.values or part.bytes:
            table.add_row(
                name, f"{part.values:,}", f"{part.bytes:,}", "yes" if part.counted else "no"
            )
    table.add_row(
        "[bold]counted[/]",
        f"[bold]{account.stored_values:,}[/]",
        f"[bold]{account.counted_bytes:,}[/]",
        "",
    )
    table.add_row(
        f"budget (IPC {storage.ipc})",
        f"{account.budget_values:,}",
        f"{account.budget_bytes:,}",
        "",
    )
    ratio, ratio_b = account.ratio, account.ratio_bytes
    style = "green" if ratio_b <= 1.0 + 1e-9 else "red"
    table.add_row("counted / budget", f"{ratio:.2f}×", f"[{style}]{ratio_b:.2f}×[/]", "")
    table.add_row("all tensors", "", f"{account.stored_bytes:,}", "")
    return table


def recipe_of(manifest: Manifest) -> Any:
    """The archive's training recipe (training.recipe, torch-free), or None if it has none."""
    from habactl.training.recipe import Recipe

    try:
        return Recipe.from_manifest(manifest)
    except (KeyError, TypeError, ValueError):  # an older manifest without every field
        return None


def _text(value: Any) -> str:
    """One value for people: lists joined, numbers short, no control characters."""
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif value is None:
        text = "none"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_text(v) for v in value) if value else "none"
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k} {_text(v)}" for k, v in value.items())
    else:
        text = str(value)
    # The manifest is untrusted: no terminal escapes, no line breaks.
    return "".join(c if c.isprintable() else "?" for c in text)


def _numbers(value: Mapping[str, Any]) -> bool:
    """A mapping of numbers only (augmentation parameters): shown on one line."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values())


def listing(values: Mapping[str, Any], indent: int = 2, width: int = MAX_WIDTH) -> list[str]:
    """An indented `key  value` listing of nested settings; long values wrap under
    their value column, never mid-word."""
    lines: list[str] = []
    pad = " " * indent
    # One value column per section, after its longest key.
    column = max([len(_text(k)) + 2 for k in values] + [KEY_WIDTH - indent + 2])
    for key in sorted(values):
        value = values[key]
        name = _text(key)
        if isinstance(value, Mapping) and value and not _numbers(value):
            lines.append(f"{pad}{name}")
            lines.extend(listing(value, indent + 2, width))
            continue
        rows = wrap_items(_items(value), max(20, width - 1 - indent - column))
        lines.append(f"{pad}{name:<{column}}{rows[0]}".rstrip())
        lines.extend(" " * (indent + column) + row for row in rows[1:])
    return lines


def _items(value: Any) -> list[str]:
    """The pieces a value may wrap between: list items, `key value` pairs, or words."""
    if isinstance(value, (list, tuple)) and value:
        return [_text(v) for v in value]
    if isinstance(value, Mapping) and value:
        return [f"{_text(k)} {_text(v)}" for k, v in value.items()]
    return [_text(value)]


def wrap_items(items: list[str], width: int) -> list[str]:
    """Items joined by ", " into rows of at most `width` characters (an item longer than
    that gets a row of its own, words wrapped); never breaks inside an item's word."""
    if len(items) == 1:
        return textwrap.wrap(items[0], width, break_long_words=False, break_on_hyphens=False) or [
            ""
        ]
    rows: list[str] = []
    row = ""
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if row and len(row) + 1 + len(piece) > width:
            rows.append(row)
            row = piece
        else:
            row = f"{row} {piece}" if row else piece
    rows.append(row)
    return rows


def _print_section(title: str, lines: list[str]) -> None:
    from rich.markup import escape

    stdout.print(f"[bold]{title}[/]")
    for line in lines:
        stdout.print(escape(line))


@app.command("inspect")
@guarded
def inspect_archive(
    archive: Path = typer.Argument(..., help="The .haba archive."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the manifest, the storage account and the training recipe "
        "as one JSON object on stdout.",
    ),
    as_config: bool = typer.Option(
        False,
        "--config",
        help="Print the compress config (TOML) that rebuilds the archive: "
        "habactl compress --config it.",
    ),
) -> None:
    """Summarise an archive: pipeline, shapes, storage account, training recipe and
    provenance (reads the header only)."""
    from habactl.format.account import storage_account
    from habactl.format.errors import ArchiveError
    from habactl.format.reader import open_archive

    try:
        opened = open_archive(archive)
    except ArchiveError:
        from habactl.cli.teacher_view import show_teacher

        if show_teacher(archive, as_json=as_json, as_config=as_config):
            return
        raise
    with opened:
        manifest, info = opened.manifest, opened.info
        expansion = opened.layout.expansion
    if as_config:
        from habactl.distill.config_file import archive_config_toml

        print(archive_config_toml(manifest, archive), end="")
        return
    account = storage_account(manifest)
    recipe = recipe_of(info)
    if as_json:
        print(
            json.dumps(
                {
                    "path": str(archive),
                    "manifest": manifest,
                    "account": account.to_json(),
                    "expanded_items": info.bases.count * expansion,
                    "labels": labels_json(info, account),
                    "recipe": None if recipe is None else recipe.as_dict(),
                    "with_teacher_bytes": (
                        None
                        if recipe is None or recipe.teacher is None
                        else account.counted_bytes + recipe.teacher.bytes
                    ),
                },
                indent=2,
                sort_keys=True,
            )
        )
        return
    from rich.markup import escape

    width = min(MAX_WIDTH, stdout.width)
    stdout.print(f"[bold]{escape(str(archive))}[/]")
    for key, value in summary(info, expansion):
        # Wrapped here, between words: the console itself does not wrap (soft_wrap).
        rows = wrap_items([_text(value)], max(20, width - 1 - 2 - KEY_WIDTH))
        stdout.print(f"  [cyan]{key:<{KEY_WIDTH}}[/]{escape(rows[0])}")
        for row in rows[1:]:
            stdout.print(" " * (2 + KEY_WIDTH) + escape(row))
    if info.storage.counts == "bases":
        stdout.print(
            "  [yellow]note[/]: the claim counts bases only (reference counting); "
            "the account below counts every stored value."
        )
    stdout.print(account_table(account, info.storage))
    stdout.print(f"  {labels_line(account)}")
    if recipe is not None and recipe.teacher is not None:
        stdout.print(f"  [yellow]{teacher_line(account, recipe.teacher.bytes)}[/]")
    if recipe is not None:
        _print_section(
            "training recipe (habactl.training.recipe; what `habactl evaluate` trains with)",
            [f"  {line}" for line in recipe.lines()],
        )
    hyper = info.provenance.hyperparameters
    if hyper:
        _print_section("hyperparameters (how the archive was made)", listing(hyper, 2, width))
