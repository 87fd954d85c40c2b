"""`habactl experts`: train expert trajectories for `compress --objective mtt`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from habactl.cli.app import app, guarded, stderr


@app.command()
@guarded
def experts(
    data: str = typer.Argument(..., help="Data set, as for compress (e.g. mnist-5k, digits)."),
    output: Path = typer.Option(..., "-o", "--output", help="Buffer folder (created; resumed if it exists)."),
    count: int = typer.Option(5, "--experts", min=1, help="Number of expert trajectories."),
    epochs: int = typer.Option(50, "--epochs", min=1, help="Epochs per expert (one stored checkpoint each)."),
    lr: float = typer.Option(0.01, "--lr", help="SGD learning rate (no momentum, as the reference)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Batch size."),
    arch: str = typer.Option("convnet", "--arch", help="Expert (and student) architecture."),
    width: float = typer.Option(1.0, "--width", help="Width multiplier of the network (1.0: 128 channels)."),
    augment: str = typer.Option("color_crop_cutout_flip_scale_rotate", "--augment",
                                help="DSA ops joined by _ (no flip on digit data), or none."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch (0: torch's default). "
                                "On a CPU busy with other work, 1 is often much faster."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder holding torchvision data sets."),
    force: bool = typer.Option(False, "--force", help="Start over in a folder made with other settings."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
) -> None:
    """Train N expert networks on DATA and store their trajectories (safetensors + index.json)."""
    from habactl.data import load_source
    from habactl.experts import ExpertSettings, train_experts

    settings = ExpertSettings(experts=count, epochs=epochs, lr=lr, batch_size=batch_size, arch=arch,
                              width=width, augment=augment, seed=seed, device=device)
    if threads:
        import torch

        torch.set_num_threads(threads)
    source = load_source(data, root=str(root) if root else None)
    started = time.perf_counter()
    bar: dict = {}

    def progress(i: int, epoch: int, total: int, metrics: dict) -> None:
        if quiet:
            return
        if not bar:  # started on the first report, so that a refusal stays one line
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            stderr.print(f"[bold]{source.name}[/]: {count} experts × {epochs} epochs, {arch} width "
                         f"{width}, SGD lr {lr}, batch {batch_size}, augmentation {augment}")
            bar["progress"] = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                       MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                       console=stderr)
            bar["progress"].start()
            bar["task"] = bar["progress"].add_task("experts", total=count * total, status="")
        status = (f"expert {i + 1}/{count}: already done" if "skipped" in metrics else
                  f"expert {i + 1}/{count} epoch {epoch}/{total} loss {metrics['loss']:.3f} "
                  f"acc {metrics['accuracy']:.3f}")
        bar["progress"].update(bar["task"], completed=i * total + epoch, status=status)

    def note(text: str) -> None:
        if not quiet:
            stderr.print(f"note: {text}")

    try:
        index = train_experts(source, output, settings, force=force, progress=progress, note=note)
    finally:
        if bar:
            bar["progress"].stop()
    if not quiet:
        stderr.print(f"[bold green]wrote[/] {output}  ({len(index['experts'])} experts, "
                     f"{index['parameters']['count']:,} parameters × {epochs + 1} checkpoints each; "
                     f"{time.perf_counter() - started:.1f} s)")
        stderr.print(f"next: habactl compress {data} --objective mtt --experts {output}")
