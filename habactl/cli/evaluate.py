"""`habactl evaluate`: train networks on an archive and test them on the real test split."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from habactl.cli.app import app, guarded, plural, stderr, stdout
from habactl.cli.options import Device
from habactl.evaluation.protocol import FAST, KD, KD_FAST, STANDARD

if TYPE_CHECKING:
    from habactl.evaluation.report import EvaluationReport
    from habactl.training.recipe import Recipe

Archive = Annotated[Path, typer.Argument(help="The .haba archive.")]
Data = Annotated[
    str | None,
    typer.Option(
        "--data", help="Data set to test on \\[default: the one in the archive's provenance]."
    ),
]
Root = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Folder holding torchvision data sets \\[default: none; the embedded sets need none].",
    ),
]
Arch = Annotated[
    list[str] | None,
    typer.Option(
        "--arch",
        help="Architectures, comma-separated or repeated: convnet (its depth follows the "
        "image size: 3 up to 45 px, 4 at 64, 5 at 128, 6 at 224), convnet-d3 to convnet-d6 "
        "(a fixed depth), mlp, alexnet, vgg11, resnet18 \\[default: convnet].",
    ),
]
Models = Annotated[
    int | None,
    typer.Option(
        "--models",
        min=1,
        help="Networks trained per architecture \\[default: "
        + f"{STANDARD.models}; --fast: {FAST.models}].",
    ),
]
Epochs = Annotated[
    int | None,
    typer.Option(
        "--epochs",
        min=1,
        help=f"Training epochs \\[default: {STANDARD.epochs}; --fast: {FAST.epochs}]; with the "
        f"kd recipe the archive's, else {KD.epochs} (--fast: {KD_FAST.epochs}).",
    ),
]
Fast = Annotated[
    bool,
    typer.Option(
        "--fast",
        help="Quick look: 150 epochs, 2 models (a few minutes for the default archive on 2 cores).",
    ),
]
Lr = Annotated[
    float | None,
    typer.Option(
        "--lr",
        help="Learning rate \\[default: the archive's learned lr, else its recommended 0.01; "
        f"a recipe the archive does not record: that recipe's ({STANDARD.lr:g}, kd {KD.lr:g})].",
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help=f"Batch size \\[default: {STANDARD.batch_size}]; with the kd recipe the "
        f"archive's, else {KD.batch_size}.",
    ),
]
RecipeKind = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        help="standard (cross-entropy, SGD, step schedule, DSA) or kd (knowledge "
        "distillation: KL divergence at a temperature, AdamW, cosine schedule, random "
        "resized crop and flip; docs/objectives.md) \\[default: the one the archive "
        "records]. Scores the same archive both ways.",
    ),
]
Teacher = Annotated[
    Path | None,
    typer.Option(
        "--teacher",
        help="Teacher file (habactl.teacher): with the kd recipe its outputs on each "
        "augmented batch are the targets (online distillation), for every arm. Needed "
        "by an archive whose recipe records a teacher \\[default: none: the stored labels].",
    ),
]
Temperature = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        help=f"Temperature of the kd loss \\[default: the archive's, else {KD.temperature:g}].",
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Model i uses seed + i.")]
Jobs = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        min=1,
        help="Networks trained at a time, each in its own process "
        "\\[default: one per CPU core, at most one per network; 1 on a GPU]. The results do "
        "not depend on it.",
    ),
]
Threads = Annotated[
    int,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch in each process. The batches are "
        "tiny: on a busy 2-core machine one thread trained 3.5x faster than two, so use "
        "--jobs for the cores. Results are reproducible for a given thread count.",
    ),
]
Baseline = Annotated[
    list[str] | None,
    typer.Option(
        "--baseline",
        help="Also train on: full (the whole real training set, epochs // 50 "
        "epochs) and/or random (random real images at the archive's true budget) \\[default: "
        "none].",
    ),
]
FullEpochs = Annotated[
    int | None,
    typer.Option(
        "--full-epochs", min=1, help="Epochs of the full-data baseline \\[default: epochs // 50]."
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")
]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress or warnings on stderr.")]


@app.command()
@guarded
def evaluate(
    archive: Archive,
    data: Data = None,
    root: Root = None,
    arch: Arch = None,
    models: Models = None,
    epochs: Epochs = None,
    fast: Fast = False,
    lr: Lr = None,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    device: Device = "auto",
    jobs: Jobs = None,
    threads: Threads = 1,
    baseline: Baseline = None,
    full_epochs: FullEpochs = None,
    recipe: RecipeKind = None,
    teacher: Teacher = None,
    temperature: Temperature = None,
    as_json: AsJson = False,
    quiet: Quiet = False,
) -> None:
    """Train networks from scratch on ARCHIVE and report their real test accuracy.

    The standard protocol (docs/method.md, "The evaluation protocol"): SGD momentum 0.9,
    weight decay 5e-4, batch 256, lr × 0.1 at half, DSA augmentation, final-epoch accuracy,
    mean ± std over models. An archive that records the knowledge-distillation recipe
    (docs/objectives.md, "Training with soft labels") trains with it; --recipe chooses.
    """
    kind = check_recipe(recipe, temperature, teacher)
    recorded = check_archive(archive)  # at once: a wrong path must not wait for torch

    from habactl.evaluation import evaluate_archive
    from habactl.runtime import distributed

    protocol = recorded.evaluation_protocol(kind, fast=fast).with_(
        epochs=epochs, models=models, batch_size=batch_size, seed=seed, temperature=temperature
    )
    if protocol.kind != "kd" and temperature is not None:
        raise_error("--temperature applies to the kd recipe (--recipe kd)")

    def warn(message: str) -> None:
        if not quiet:
            print(f"habactl: warning: {message}", file=sys.stderr)

    with _progress(quiet) as report:
        result = evaluate_archive(
            archive,
            protocol=protocol,
            archs=arch or ["convnet"],
            data=data,
            root=root,
            lr=lr,
            baselines=baseline or [],
            full_epochs=full_epochs,
            device=device,
            threads=threads,
            jobs=jobs,
            progress=report,
            warn=warn,
            collective=distributed.current(),  # torchrun's ranks share the networks
            teacher=teacher,
        )
    if as_json:
        print(json.dumps(result.to_json(), sort_keys=True))
    else:
        print_result(result)


def check_archive(archive: Path) -> Recipe:
    """The archive's path and header, checked before anything heavy loads (the one check
    of the evaluation's input; the library leaves a bad path to the reader); the recipe
    it records."""
    from habactl.errors import HabaError
    from habactl.format import open_archive
    from habactl.training.recipe import Recipe

    if archive.is_dir():
        raise HabaError(f"{archive}: is a folder, not a .haba archive (give the archive file)")
    if not archive.exists():
        raise HabaError(f"{archive}: no such archive")
    with open_archive(archive) as opened:
        return Recipe.from_manifest(opened.info)


def check_recipe(recipe: str | None, temperature: float | None, teacher: Path | None) -> str | None:
    """--recipe's value checked (None: the archive's), and --teacher's file exists."""
    from habactl.evaluation.protocol import KINDS

    kind = None if recipe is None else recipe.strip().lower()
    if kind is not None and kind not in KINDS:
        raise_error(f"unknown recipe {recipe!r} (known: {', '.join(KINDS)})")
    if kind == "standard" and (temperature is not None or teacher is not None):
        raise_error("--temperature and --teacher apply to the kd recipe, not --recipe standard")
    if teacher is not None and not teacher.is_file():
        raise_error(f"{teacher}: no such teacher file")
    return kind


def raise_error(message: str) -> NoReturn:
    from habactl.errors import HabaError

    raise HabaError(message)


class _progress:
    """Epochs trained over all networks of the evaluation (they may train several at a
    time) on stderr, naming the networks in training; see habactl.distill.progress."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.line: Any = None
        self.networks: dict[tuple[str, str, int], tuple[int, int, int]] = {}

    def __enter__(self) -> Any:
        if self.quiet:
            return None
        from habactl.distill.progress import ProgressLine

        self.line = ProgressLine(stderr, unit="epochs", transient=True)
        self.line.start(None, 0, "loading the archive and the test data")
        return self

    def __call__(
        self, arm: str, arch: str, model: int, models: int, epoch: int, epochs: int
    ) -> None:
        assert self.line is not None
        self.networks[(arm, arch, model)] = (epoch, epochs, models)
        training = [
            f"{a} {n} {m + 1}/{total}"
            for (a, n, m), (e, es, total) in self.networks.items()
            if 0 < e < es
        ]
        done = sum(1 for e, es, _ in self.networks.values() if e >= es)
        description = f"{done}/{plural(len(self.networks), 'network')}"
        self.line.update(
            sum(e for e, _, _ in self.networks.values()),
            total=sum(es for _, es, _ in self.networks.values()),
            description=description,
            training=("training " + ", ".join(training[:3]) + (" …" if len(training) > 3 else ""))
            if training
            else "",
        )

    def __exit__(self, *exc: Any) -> None:
        if self.line is not None:
            self.line.stop()


def print_result(result: EvaluationReport) -> None:
    from rich.table import Table

    archive, data, run = result.archive, result.data, result.run
    protocol = run.protocol
    stdout.print(
        f"[bold]{archive.path}[/]: {archive.training_images:,} training images from "
        f"{archive.stored_values:,} stored values (budget {archive.budget_values:,}); "
        f"tested on {data.name} ({data.test_images:,} test images)"
    )
    table = Table(show_edge=False)
    for name, justify in (
        ("arm", "left"),
        ("arch", "left"),
        ("images", "right"),
        ("epochs", "right"),
        ("lr", "right"),
        ("accuracy %", "right"),
        ("models", "right"),
        ("time", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    arms = [
        (
            "archive",
            archive.training_images,
            protocol.epochs,
            _lr_text(run.lr, run.lr_source),
            result.results,
        )
    ]
    arms += [
        (name, b.training_images, b.epochs, f"{b.lr:g}", b.results)
        for name, b in result.baselines.items()
    ]
    for arm, images, epochs, lr, results in arms:
        for arch_name, r in results.items():
            table.add_row(
                arm,
                arch_name,
                f"{images:,}",
                str(epochs),
                lr,
                f"{r.mean:.2f} ± {r.std:.2f}",
                str(r.models),
                f"{r.seconds:.0f} s",
            )
    stdout.print(table)
    stdout.print(
        f"final-epoch accuracy, mean ± std over models; batch {protocol.batch_size}, "
        f"{_training_text(protocol, run.teacher, run.crop_epochs)}, seed {protocol.seed}, "
        f"{run.device} "
        f"({run.jobs} at a time, {plural(run.threads, 'thread')} each); "
        f"{result.seconds:.0f} s in all"
    )
    for name, b in result.baselines.items():
        if b.note:
            stdout.print(f"{name}: {b.note}")


def _training_text(
    protocol: Any, teacher: dict[str, Any] | None, crop_epochs: int | None = None
) -> str:
    """The protocol's schedule, augmentation and (kd) loss, for the line under the table."""
    if protocol.schedule == "cosine":
        schedule = "cosine schedule"
    else:
        schedule = (
            f"lr × {protocol.lr_decay:g} at epoch {int(protocol.epochs * protocol.lr_decay_at)}"
        )
    if protocol.optimizer == "adamw":
        schedule = f"AdamW, {schedule}"
    augmentation = protocol.augmentation
    if crop_epochs is not None:
        text = f"{schedule}, the archive's stored crops ({crop_epochs} epochs of views)"
    elif augmentation == "rrc_flip":
        text = f"{schedule}, rrc_flip (area {protocol.crop_scale:g} to 1) augmentation"
    else:
        text = f"{schedule}, {augmentation} augmentation"
    if protocol.loss == "kd":
        targets = (
            f"teacher {teacher.get('file', teacher['path'])}"
            if teacher is not None
            else "the stored labels" + (" of each view" if crop_epochs is not None else "")
        )
        text += f", kd loss at temperature {protocol.temperature:g} against {targets}"
    return text


def _lr_text(lr: float, source: str) -> str:
    return f"{lr:g}" + {"learned": " (learned)", "option": " (--lr)"}.get(source, "")
