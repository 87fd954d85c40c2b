"""`habactl inspect`: what an archive holds, from its header alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from habactl.cli.app import app, guarded, stdout


def describe_stage(stage: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in sorted(stage["configuration"].items()))
    return f"{stage['name']}({settings})"


def summary(path: Path, manifest: dict[str, Any], account: dict[str, Any],
            expansion: int) -> list[tuple[str, str]]:
    image = manifest["image"]
    bases = manifest["bases"]
    prov = manifest["provenance"]
    training = manifest["training"]
    per_class = sorted(set(bases["per_class"]))
    per_class_text = str(per_class[0]) if len(per_class) == 1 else f"{min(per_class)}–{max(per_class)}"
    pipeline = " → ".join(describe_stage(s) for s in manifest["pipeline"]) or "none (raw images)"
    learned = training.get("learned_lr")
    return [
        ("format", f"{manifest['format']} {manifest['format_version']}"),
        ("data set", f"{prov['dataset']['name']}  ({prov['dataset']['fingerprint'][:23]}…)"),
        ("classes", f"{len(manifest['classes'])}: {', '.join(manifest['classes'][:10])}"
                    + (" …" if len(manifest["classes"]) > 10 else "")),
        ("image", f"{image['channels']}×{image['height']}×{image['width']}"),
        ("bases", f"{bases['count']} ({per_class_text} per class) at "
                  + "×".join(str(s) for s in bases["shape"])),
        ("pipeline", pipeline),
        ("expands to", f"{bases['count'] * expansion:,} training images"),
        ("labels", manifest["labels"]["kind"]),
        ("normalisation", manifest["normalization"]["kind"]),
        ("training", f"lr {training['recommended']['lr']}"
                     + (" (learned)" if learned is not None else "")
                     + f", {training['recommended']['arch']}, "
                       f"{training['recommended']['epochs']} epochs"),
        ("objective", f"{prov['objective']}, {prov['iterations']} iterations, seed {prov['seed']}"),
        ("made by", f"{prov['library']} at {prov['created']}"),
    ]


def account_table(account: dict[str, Any], storage: dict[str, Any]) -> Table:
    table = Table(title="storage account", title_justify="left", show_edge=False)
    table.add_column("part")
    table.add_column("values", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("counted")
    for name, part in account["parts"].items():
        if part["values"] or part["bytes"]:
            table.add_row(name, f"{part['values']:,}", f"{part['bytes']:,}",
                          "yes" if part["counted"] else "no")
    table.add_row("[bold]stored[/]", f"[bold]{account['stored_values']:,}[/]",
                  f"{account['stored_bytes']:,}", "")
    table.add_row(f"budget (IPC {storage['ipc']})", f"{account['budget_values']:,}", "", "")
    ratio = account["ratio"]
    style = "green" if ratio <= 1.0 + 1e-9 else "red"
    table.add_row("stored / budget", f"[{style}]{ratio:.2f}×[/]", "", "")
    return table


@app.command("inspect")
@guarded
def inspect_archive(
    archive: Path = typer.Argument(..., help="The .haba archive."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and account as JSON on stdout."),
) -> None:
    """Summarise an archive: pipeline, shapes, storage account, provenance (header only)."""
    from habactl.codecs import describe_pipeline
    from habactl.format import open_archive, storage_account

    with open_archive(archive) as opened:
        manifest = opened.manifest
    account = storage_account(manifest)
    expansion = describe_pipeline(manifest["pipeline"], tuple(manifest["bases"]["shape"])).expansion
    if as_json:
        print(json.dumps({"path": str(archive), "manifest": manifest, "account": account,
                          "expanded_items": manifest["bases"]["count"] * expansion}, indent=2,
                         sort_keys=True))
        return
    stdout.print(f"[bold]{archive}[/]")
    for key, value in summary(archive, manifest, account, expansion):
        stdout.print(f"  [cyan]{key:<14}[/]{value}")
    if manifest["storage"].get("counts") == "bases":
        stdout.print("  [yellow]note[/]: the claim counts bases only (reference counting); "
                     "the account below counts every stored value.")
    stdout.print(account_table(account, manifest["storage"]))
    hyper = manifest["provenance"].get("hyperparameters") or {}
    if hyper:
        stdout.print("  [cyan]hyperparameters[/] " + json.dumps(hyper, sort_keys=True))
