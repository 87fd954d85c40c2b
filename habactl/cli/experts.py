"""`habactl experts`: train expert trajectories for `compress --objective mtt`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from habactl.cli.app import app, examples_epilog, guarded, plural, stderr
from habactl.cli.options import Augment, Device, Quiet, Root, Seed, Threads, Width

if TYPE_CHECKING:
    from habactl.experts.train import ExpertEpoch, ExpertSettings

EXAMPLES = [
    "habactl experts digits -o digits-experts --experts 2 --epochs 10",
    "habactl experts mnist-5k -o buf --threads 1   # rerun the same line to resume",
    "habactl compress mnist-5k --objective mtt --experts buf",
]


Data = Annotated[
    str,
    typer.Argument(help="Data set, as for compress (e.g. mnist-5k, digits, a store of any size)."),
]
Output = Annotated[
    Path, typer.Option("-o", "--output", help="Buffer folder (created; resumed if it exists).")
]
Count = Annotated[int, typer.Option("--experts", min=1, help="Number of expert trajectories.")]
Epochs = Annotated[
    int, typer.Option("--epochs", min=1, help="Epochs per expert (one stored checkpoint each).")
]
Lr = Annotated[
    float, typer.Option("--lr", help="SGD learning rate (no momentum, as the reference).")
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Batch size.")]
Arch = Annotated[
    str,
    typer.Option(
        "--arch",
        help="Expert (and student) architecture: convnet (depth by image size), "
        "convnet-d3 to convnet-d6, mlp, alexnet, vgg11, resnet18.",
    ),
]
Force = Annotated[
    bool, typer.Option("--force", help="Start over in a folder made with other settings.")
]


@app.command(epilog=examples_epilog(EXAMPLES))
@guarded
def experts(
    data: Data,
    output: Output,
    count: Count = 5,
    epochs: Epochs = 50,
    lr: Lr = 0.01,
    batch_size: BatchSize = 256,
    arch: Arch = "convnet",
    width: Width = 1.0,
    augment: Augment = "color_crop_cutout_flip_scale_rotate",
    seed: Seed = 0,
    device: Device = "auto",
    threads: Threads = 0,
    root: Root = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Train N expert networks on DATA and store their trajectories (safetensors + index.json).

    The folder must be new, empty or an experts buffer: habactl never
    writes into a folder of other files.
    """
    from habactl.data.opening import open_data
    from habactl.experts.buffer import check_buffer_target
    from habactl.experts.train import ExpertSettings, fill_buffer
    from habactl.runtime import distributed
    from habactl.runtime.atomic import OutputError, describe

    check_buffer_target(output)  # every check on the output, before the data is loaded
    settings = ExpertSettings(
        experts=count,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        arch=arch,
        width=width,
        augment=augment,
        seed=seed,
        device=device,
    )
    if threads:
        import torch

        torch.set_num_threads(threads)
    source = open_data(data, root=str(root) if root else None)
    started = time.perf_counter()
    bar: dict = {}
    progress = _progress(bar, source, quiet, settings)

    def note(text: str) -> None:
        if not quiet:
            stderr.print(f"note: {text}")

    job = distributed.current()  # torchrun's ranks share the experts
    created = not output.exists()
    try:
        index = fill_buffer(
            source, output, settings, force=force, progress=progress, note=note, collective=job
        )
    except OSError as error:  # e.g. the folder's own mkdir; the buffer's files say it themselves
        remove_if_unused(output, created)
        raise OutputError(describe(error, output)) from None
    except OutputError:
        remove_if_unused(output, created)
        raise
    finally:
        if bar:
            bar["progress"].stop()
    if not quiet:
        stderr.print(
            f"[bold green]wrote[/] {output}  ({plural(len(index.experts), 'expert')}, "
            f"{index.parameters.count:,} parameters × {epochs + 1} checkpoints "
            f"each; {time.perf_counter() - started:.1f} s)"
        )
        stderr.print(f"next: habactl compress {data} --objective mtt --experts {output}")


def remove_if_unused(folder: Path, created: bool) -> None:
    """A folder this run made and that holds no finished expert goes again on failure."""
    from habactl.errors import HabaError
    from habactl.experts.buffer import INDEX, read_index

    if not created or not folder.is_dir():
        return
    names = set(os.listdir(folder))
    if not names <= {INDEX}:
        return
    try:
        if names and read_index(folder).experts:
            return
        (folder / INDEX).unlink(missing_ok=True)
        folder.rmdir()
    except (OSError, HabaError):
        pass  # leaving an empty buffer behind is harmless


def _progress(
    bar: dict,
    source: Any,
    quiet: bool,
    settings: ExpertSettings,
) -> Callable[[ExpertEpoch], None]:
    """The progress callback of fill_buffer: one line, started on the first report."""
    s, count = settings, settings.experts

    def progress(report: ExpertEpoch) -> None:
        if quiet:
            return
        i, epoch, total = report.expert, report.epoch, report.epochs
        if not bar:  # started on the first report, so that a refusal stays one line
            from habactl.distill.progress import ProgressLine  # the one progress display

            bar["progress"] = ProgressLine(stderr, unit="epochs")
            # Name the ops that really run: digit data drop the flip (a mirrored 2 is no 2).
            from habactl.nets.registry import arch_name
            from habactl.training.augment import SiameseAugment

            ops = SiameseAugment(s.augment, flip=not source.is_digits).ops
            shown = "_".join(ops) or "none"
            built = arch_name(s.arch, source.height, source.width)  # "convnet-d4" at 64 px
            bar["progress"].message(
                f"[bold]{source.name}[/]: {plural(count, 'expert')} × "
                f"{plural(s.epochs, 'epoch')}, {built} width {s.width}, SGD lr {s.lr}, "
                f"batch {s.batch_size}, augmentation {shown}"
            )
            bar["progress"].start(count * total, 0, "experts")
        status = (
            f"expert {i + 1}/{count}: already done"
            if report.skipped
            else f"expert {i + 1}/{count} epoch {epoch}/{total} loss {report.loss:.3f} "
            f"acc {report.accuracy:.3f}"
        )
        bar["progress"].update(i * total + epoch, status=status)

    return progress
