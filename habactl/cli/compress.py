"""`habactl compress`: make a .haba archive from a data set."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from habactl.cli.app import app, guarded, stderr
from habactl.errors import HabaError

DEFAULT_SOURCE = "mnist-5k"
OBJECTIVES = ("random",)


@app.command()
@guarded
def compress(
    data: str = typer.Argument(
        DEFAULT_SOURCE,
        help="Data set: an embedded name (mnist-5k, digits), a torchvision name "
        "(mnist, fashion-mnist, kmnist, cifar10, cifar100, svhn) with --root, "
        "an ImageFolder directory, or an .h5/.npz file.",
    ),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Archive to write [default: <data>.haba in the current folder]."
    ),
    objective: str = typer.Option(
        "random", "--objective", help="How the synthetic set is made: random (real images)."
    ),
    ipc: int = typer.Option(1, "--ipc", min=1, help="Budget: images per class, in stored values."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder holding torchvision data sets."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download (needs a network)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
) -> None:
    """Compress DATA into a .haba archive (default: the embedded mnist-5k set)."""
    from habactl.archive_io import write_haba
    from habactl.baselines import random_per_class
    from habactl.codecs import Pipeline
    from habactl.data import load_source
    from habactl.normalization import Normalizer, mean_std

    if objective not in OBJECTIVES:
        raise HabaError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    target = output or Path(f"{Path(data).stem if Path(data).suffix else data}.haba")
    if target.exists() and not force:
        raise HabaError(f"{target} exists; pass --force to replace it")
    started = time.perf_counter()
    source = load_source(data, root=str(root) if root else None, download=download)
    normalization = mean_std(source.mean(), source.std())
    indices = random_per_class(source.train.labels, ipc, source.num_classes, seed)
    bases = Normalizer(normalization)(source.train.images[indices])
    labels = source.train.labels[indices].long()
    pipeline = Pipeline.from_manifest([], tuple(bases.shape[1:]))
    path = write_haba(
        target,
        source=source,
        bases=bases,
        labels=labels,
        pipeline=pipeline,
        normalization=normalization,
        objective="random",
        hyperparameters={"per_class": ipc},
        iterations=0,
        seed=seed,
        ipc=ipc,
        overwrite=force,
    )
    if not quiet:
        report_written(path, time.perf_counter() - started)


def report_written(path: Path, seconds: float) -> None:
    """What a user wants after a compress: the account, the time, what to do next."""
    from habactl.format import open_archive, storage_account

    with open_archive(path) as archive:
        account = storage_account(archive.manifest)
    stderr.print(
        f"[bold green]wrote[/] {path}  "
        f"({account['stored_values']:,} stored values = {account['ratio']:.2f}× the budget "
        f"of {account['budget_values']:,}; {path.stat().st_size:,} bytes; {seconds:.1f} s)"
    )
    stderr.print(
        f"next: habactl inspect {path}  ·  habactl preview {path} -o {path.with_suffix('.png')}"
        f"  ·  habactl evaluate {path} --fast"
    )
