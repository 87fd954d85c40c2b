"""`habactl teacher`: train a teacher network (batch norm) on a data set or a store.

Built when it runs (``app.LAZY_COMMANDS``), like compress: the architectures it offers
come from the network registry, which imports torch, and ``habactl --help`` must not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from habactl.cli.app import HabaTyper, examples_epilog, guarded, plural, stderr
from habactl.cli.options import Augment, Device, Quiet, Root, Seed, Threads, Width

if TYPE_CHECKING:
    from habactl.teacher.train import TeacherEpoch, TeacherSettings

EXAMPLES = [
    "habactl teacher digits -o digits-teacher.safetensors --epochs 10",
    "habactl teacher mnist-5k -o mnist-teacher.safetensors --threads 1",
    "habactl teacher in64.store -o in64-resnet.safetensors --arch resnet18 --device cuda",
    "torchrun --nproc-per-node 2 -m habactl teacher digits -o t.safetensors   # ranks share "
    "each batch",
]

Data = Annotated[
    str,
    typer.Argument(
        help="Data set, as for compress (e.g. mnist-5k, digits, a store made by habactl "
        "prepare, of any size: it is read batch by batch)."
    ),
]
Output = Annotated[
    Path,
    typer.Option("-o", "--output", help="The teacher file to write (.safetensors)."),
]
Arch = Annotated[
    str,
    typer.Option(
        "--arch",
        help="Network, built with batch norm: convnet (depth by image size), convnet-d3 "
        "to convnet-d6, alexnet, vgg11, resnet18.",
    ),
]
Epochs = Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training split.")]
Lr = Annotated[
    float,
    typer.Option(
        "--lr", help="Peak SGD learning rate (momentum 0.9, weight decay 5e-4, cosine to 0)."
    ),
]
BatchSize = Annotated[
    int, typer.Option("--batch-size", min=1, help="Batch size (shared by torchrun's ranks).")
]
Force = Annotated[bool, typer.Option("--force", help="Replace the output file if it exists.")]


def command() -> Any:
    """The teacher command (typer reads it from the function below)."""
    shell = HabaTyper(add_completion=False, pretty_exceptions_enable=False)
    shell.command("teacher", epilog=examples_epilog(EXAMPLES))(teacher)
    return typer.main.get_command(shell)


@guarded
def teacher(
    data: Data,
    output: Output,
    arch: Arch = "convnet",
    epochs: Epochs = 20,
    lr: Lr = 0.05,
    batch_size: BatchSize = 128,
    width: Width = 1.0,
    augment: Augment = "color_crop_cutout_flip_scale_rotate",
    seed: Seed = 0,
    device: Device = "auto",
    threads: Threads = 0,
    root: Root = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Train a teacher on DATA: a network with batch norm that the teacher-driven
    objectives and relabelling read. Writes one .safetensors file with the network's
    classes, input normalisation and data fingerprint. See docs/teacher.md.

    The output is checked before the data is read. Under torchrun the ranks share each
    batch and rank 0 writes the file.
    """
    from habactl.runtime.atomic import check_file_target

    check_file_target(output, force, example="teacher.safetensors")  # before any work
    from habactl.teacher.train import TeacherSettings, train_teacher

    settings = TeacherSettings(
        arch=arch,
        width=width,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        augment=augment,
        seed=seed,
        device=device,
    )
    settings.check()
    if threads:
        import torch

        torch.set_num_threads(threads)
    from habactl.data.opening import open_data
    from habactl.runtime import distributed

    source = open_data(data, root=str(root) if root else None)
    job = distributed.current()
    started = time.perf_counter()
    display = _Display(source, settings, quiet or not job.is_main, job.world_size)
    try:
        made = train_teacher(
            source,
            output,
            settings,
            progress=display.epoch,
            step_progress=display.step,
            collective=job,
        )
    finally:
        display.stop()
    if quiet or not job.is_main:
        return
    training = made.info.training
    stderr.print(
        f"[bold green]wrote[/] {output}: {made.arch}, train accuracy "
        f"{training['train_accuracy']:.4f}, test accuracy {training['test_accuracy']:.4f}, "
        f"{made.file_bytes:,} bytes ({time.perf_counter() - started:.1f} s)"
    )


class _Display:
    """The progress line: a header once training starts, a bar over every batch of the
    run, and the last epoch's loss and accuracy beside it."""

    def __init__(self, source: Any, settings: TeacherSettings, quiet: bool, ranks: int) -> None:
        self.source, self.settings, self.quiet, self.ranks = source, settings, quiet, ranks
        self.line: Any = None
        self.status = ""

    def _start(self, total: int) -> None:
        from habactl.distill.progress import ProgressLine  # the one progress display
        from habactl.nets.registry import arch_name
        from habactl.training.augment import SiameseAugment

        s, source = self.settings, self.source
        ops = SiameseAugment(s.augment, flip=not source.is_digits).ops  # the ops that run
        built = arch_name(s.arch, source.height, source.width)
        shared = f", {self.ranks} ranks" if self.ranks > 1 else ""
        self.line = ProgressLine(stderr, unit="steps")
        self.line.message(
            f"[bold]{source.name}[/]: teacher {built} width {s.width} with batch norm, "
            f"{plural(len(source.train.labels), 'training image')}, "
            f"{plural(s.epochs, 'epoch')}, SGD lr {s.lr} cosine, batch {s.batch_size}"
            f"{shared}, augmentation {'_'.join(ops) or 'none'}"
        )
        self.line.start(total, 0, "teacher")

    def step(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.line is None:  # started on the first step: a refusal stays one line
            self._start(total)
        self.line.update(done, status=self.status)

    def epoch(self, report: TeacherEpoch) -> None:
        if self.quiet or self.line is None:
            return
        self.status = (
            f"epoch {report.epoch}/{report.epochs} loss {report.loss:.3f} acc {report.accuracy:.3f}"
        )
        self.line.update(status=self.status)

    def stop(self) -> None:
        if self.line is not None:
            self.line.stop()


__all__ = ["command"]
