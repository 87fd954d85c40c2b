"""`habactl relabel`: recompute an archive's soft labels with a teacher.

A thin shell over ``habactl.labels.relabel``. Built when it runs (``app.LAZY_COMMANDS``):
the teacher and the loader import torch, which ``habactl --help`` must not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from habactl.cli.app import LAZY_COMMANDS, HabaTyper, guarded, stderr
from habactl.cli.options import Device, Quiet, Threads

EXAMPLES = """Examples:

  habactl relabel a.haba --teacher digits.safetensors -o b.haba

  habactl relabel a.haba --teacher t.safetensors -o b.haba --labels top-k:10 --temperature 4

  habactl relabel a.haba --teacher t.safetensors -o b.haba --labels uint8 --allow-over

  habactl relabel a.haba --teacher t.safetensors -o b.haba --labels top-k:3 --crops 300 --allow-over

The labels are counted in the archive's bytes; `habactl inspect b.haba` shows them beside
the images' bytes (docs/labels.md)."""


def command() -> Any:
    shell = HabaTyper(add_completion=False, pretty_exceptions_enable=False)
    shell.command("relabel", help=LAZY_COMMANDS["relabel"][1], epilog=EXAMPLES)(relabel)
    return typer.main.get_command(shell)


@guarded
def relabel(
    archive: Annotated[Path, typer.Argument(help="The .haba archive to relabel.")],
    teacher: Annotated[
        Path,
        typer.Option(
            "--teacher",
            help="The teacher file (habactl teacher writes one), or a torchvision ResNet "
            "state dict.",
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The new archive.")],
    labels: Annotated[
        str,
        typer.Option(
            "--labels",
            help="How the soft labels are stored: float32 (4 bytes a value), float16 (2), "
            "uint8 (1, and a scale per row) or top-k:K (the K largest of each row as float16 "
            "and their classes; the rest spread evenly).",
        ),
    ] = "float32",
    temperature: Annotated[
        float,
        typer.Option("--temperature", help="Soften the teacher: softmax(logits / T)."),
    ] = 1.0,
    allow_over: Annotated[
        bool,
        typer.Option(
            "--allow-over", help="Write the archive even when its bytes exceed its budget."
        ),
    ] = False,
    crops: Annotated[
        int,
        typer.Option(
            "--crops",
            min=0,
            help="Also store this many epochs of per-crop labels: a random resized crop of "
            "every training image per epoch and the teacher's label for it, which the kd "
            "recipe then trains on (SRe2L's relabelling). Counted: per view a label row, "
            "8 bytes of box and 1 of flag. 0: none.",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Draws the --crops views.")] = 0,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images per teacher forward pass.")
    ] = 256,
    device: Device = "auto",
    threads: Threads = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    quiet: Quiet = False,
) -> None:
    """Recompute ARCHIVE's labels with a teacher and write them, in the form --labels asks
    for, to a new archive (same bases and pipeline); print its bytes against its budget."""
    from habactl.labels.relabeling import relabel as run
    from habactl.runtime.device import resolve_device

    started = time.perf_counter()
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = run(
        archive,
        teacher,
        output,
        form=labels,
        temperature=temperature,
        allow_over=allow_over,
        overwrite=force,
        batch_size=batch_size,
        device=resolve_device(device),
        crops=crops,
        seed=seed,
    )
    if quiet:
        return
    budget = result.budget
    note = "  [yellow](over its budget: --allow-over)[/]" if budget.over else ""
    stderr.print(f"wrote {result.path} ({time.perf_counter() - started:.1f} s){note}")
    per_crop = (
        f"; per crop: {result.crops} epochs, {budget.crop_views:,} views" if result.crops else ""
    )
    stderr.print(f"  labels {result.form.describe()}, temperature {result.temperature:g}{per_crop}")
    stderr.print(f"  {budget.line()}")
