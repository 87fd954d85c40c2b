"""`habactl compress`: make a .haba archive from a data set."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from habactl.cli.app import app, guarded, stderr
from habactl.errors import HabaError

DEFAULT_SOURCE = "mnist-5k"
OBJECTIVES = ("dm", "dc", "dsa", "mtt", "random")
DEFAULT_OBJECTIVE = "dm"
DEFAULT_CODEC = "haba+idc"

_DISTILL = "Distillation"
_BUDGET = "Budget and codec"
_RUN = "Run control"


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
        None, "-o", "--output", help="Archive to write \\[default: <data>.haba in the current folder]."
    ),
    objective: str = typer.Option(
        DEFAULT_OBJECTIVE, "--objective",
        help="How the synthetic set is made: dm (distribution matching), dc (gradient matching), "
        "dsa (gradient matching with Siamese augmentation), mtt (trajectory matching; needs "
        "--experts) or random (real images)."),
    ipc: int = typer.Option(1, "--ipc", min=1, help="Budget: images per class, in stored values.",
                            rich_help_panel=_BUDGET),
    codec: Optional[str] = typer.Option(
        None, "--codec", help="What is stored: raw images, idc (low-resolution bases), haba "
        "(bases x hallucinators) or haba+idc \\[default: haba+idc; raw for --objective random].",
        rich_help_panel=_BUDGET),
    budget_counts: str = typer.Option(
        "all", "--budget-counts", help="What the budget is charged with: all stored values, or "
        "bases only (the reference code's counting; hallucinators ride free).",
        rich_help_panel=_BUDGET),
    factor: Optional[int] = typer.Option(
        None, "--factor", min=1, help="IDC downsampling factor of the bases \\[default: 2].",
        rich_help_panel=_BUDGET),
    hallucinators: int = typer.Option(5, "--hallucinators", min=1, help="Number of hallucinators.",
                                      rich_help_panel=_BUDGET),
    hallucinator_arch: str = typer.Option(
        "channel-affine", "--hallucinator-arch",
        help="channel-affine (a few dozen values each) or pixel-affine (the reference design).",
        rich_help_panel=_BUDGET),
    hallucinator_hidden: int = typer.Option(3, "--hallucinator-hidden", min=1,
                                            help="Hidden channels of a hallucinator.",
                                            rich_help_panel=_BUDGET),
    hallucinator_kernel: int = typer.Option(3, "--hallucinator-kernel", min=1,
                                            help="Kernel size of a hallucinator (odd).",
                                            rich_help_panel=_BUDGET),
    leftover: str = typer.Option(
        "bases", "--leftover", help="Budget left after equal bases per class: bases (one more "
        "basis for the most varied classes) or none.", rich_help_panel=_BUDGET),
    iterations: Optional[int] = typer.Option(
        None, "--iterations", min=0, help="Distillation iterations \\[default: 300].",
        rich_help_panel=_DISTILL),
    real_per_class: Optional[int] = typer.Option(
        None, "--real-per-class", min=1,
        help="Real images per class per iteration \\[default: dm 32; dc, dsa 64].",
        rich_help_panel=_DISTILL),
    views: Optional[int] = typer.Option(
        None, "--views", min=0,
        help="Hallucinations per basis per iteration, 0 = all \\[default: dm 1; dc, dsa 0].",
        rich_help_panel=_DISTILL),
    outer_loop: Optional[int] = typer.Option(
        None, "--outer-loop", min=1, help="dc/dsa: matches per network \\[default: by IPC, as the reference].",
        rich_help_panel=_DISTILL),
    inner_loop: Optional[int] = typer.Option(
        None, "--inner-loop", min=0, help="dc/dsa: network epochs on the synthetic set between matches "
        "\\[default: by IPC].", rich_help_panel=_DISTILL),
    experts: Optional[Path] = typer.Option(
        None, "--experts", help="mtt: the experts buffer (make one with habactl experts).",
        rich_help_panel=_DISTILL),
    syn_steps: Optional[int] = typer.Option(None, "--syn-steps", min=1,
                                            help="mtt: student steps per iteration \\[default: 20].",
                                            rich_help_panel=_DISTILL),
    expert_epochs: Optional[int] = typer.Option(None, "--expert-epochs", min=1,
                                                help="mtt: expert epochs to match (M) \\[default: 2].",
                                                rich_help_panel=_DISTILL),
    max_start_epoch: Optional[int] = typer.Option(
        None, "--max-start-epoch", min=1, help="mtt: students start below this epoch "
        "\\[default: min(20, buffer epochs - M + 1)].", rich_help_panel=_DISTILL),
    lr_lr: Optional[float] = typer.Option(None, "--lr-lr", help="mtt: learning rate of the learned "
                                          "learning rate \\[default: 1e-5].", rich_help_panel=_DISTILL),
    batch_syn: Optional[int] = typer.Option(None, "--batch-syn", min=0, help="mtt: bases per student "
                                            "step (0: all) \\[default: 0].", rich_help_panel=_DISTILL),
    unroll: Optional[str] = typer.Option(
        None, "--unroll", help="mtt: recompute (one step's graph in memory at a time) or full "
        "\\[default: recompute].", rich_help_panel=_DISTILL),
    lr_bases: Optional[float] = typer.Option(None, "--lr-bases", help="SGD learning rate of the bases "
                                             "\\[default: 1.0 for dm, 0.1 for dc/dsa, 100 for mtt].",
                                             rich_help_panel=_DISTILL),
    lr_hallucinators: Optional[float] = typer.Option(
        None, "--lr-hallucinators", help="SGD learning rate of the hallucinators.",
        rich_help_panel=_DISTILL),
    momentum: Optional[float] = typer.Option(None, "--momentum", help="SGD momentum.",
                                             rich_help_panel=_DISTILL),
    init: str = typer.Option("real", "--init", help="Bases start as real images or noise.",
                             rich_help_panel=_DISTILL),
    augment: Optional[str] = typer.Option(
        None, "--augment",
        help="Siamese augmentation ops joined by _ (no flip on digit data), or none "
        "\\[default: color_crop_cutout_flip_scale_rotate; none for dc].",
        rich_help_panel=_DISTILL),
    contrastive: Optional[bool] = typer.Option(
        None, "--contrastive/--no-contrastive",
        help="HaBa's adversarial contrastive term \\[default: on when there are hallucinators].",
        rich_help_panel=_DISTILL),
    contrast_weight: float = typer.Option(0.1, "--contrast-weight",
                                          help="Weight of the cosine penalty on the synthetic side.",
                                          rich_help_panel=_DISTILL),
    extractor_lr: float = typer.Option(1e-3, "--extractor-lr",
                                       help="SGD learning rate of the contrastive feature extractor.",
                                       rich_help_panel=_DISTILL),
    contrast_batch: int = typer.Option(32, "--contrast-batch", min=0,
                                       help="Bases per iteration in the contrastive term (0: all).",
                                       rich_help_panel=_DISTILL),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda.", rich_help_panel=_RUN),
    threads: int = typer.Option(
        0, "--threads", min=0, help="CPU threads for torch (0: torch's default, one per core). Results "
        "depend on it (it is recorded); on a CPU busy with other work, 1 is often much faster.",
        rich_help_panel=_RUN),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1,
                                         help="Iterations between checkpoints.", rich_help_panel=_RUN),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Checkpoint file \\[default: <output>.ckpt].", rich_help_panel=_RUN),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint.",
                                rich_help_panel=_RUN),
    log: bool = typer.Option(False, "--log", help="Write a JSONL metrics log next to the output.",
                             rich_help_panel=_RUN),
    log_file: Optional[Path] = typer.Option(None, "--log-file",
                                            help="Write the JSONL metrics log here (implies --log).",
                                            rich_help_panel=_RUN),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder holding torchvision data sets."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download (needs a network)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
) -> None:
    """Compress DATA into a .haba archive (default: HaBa + distribution matching on mnist-5k, IPC 1)."""
    from habactl.data import load_source

    if objective not in OBJECTIVES:
        raise HabaError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    target = output or Path(f"{Path(data).stem if Path(data).suffix else data}.haba")
    if target.exists() and not force:
        raise HabaError(f"{target} exists; pass --force to replace it")
    if not target.parent.is_dir():
        raise HabaError(f"cannot write {target}: folder {target.parent} does not exist")
    started = time.perf_counter()

    if objective == "random":
        if codec not in (None, "raw"):
            raise HabaError("--objective random keeps real images as they are: only --codec raw applies")
        source = load_source(data, root=str(root) if root else None, download=download)
        path = _random_selection(source, target, ipc=ipc, seed=seed, force=force)
        if not quiet:
            report_written(path, time.perf_counter() - started)
        return

    import torch

    from habactl.distill import DistillConfig, Distiller, Interrupted
    from habactl.distill.progress import RichReporter

    from habactl.distill.objectives import get_objective

    objective_class = get_objective(objective)
    defaults = DistillConfig(**getattr(objective_class, "engine_defaults", {}))
    if experts is not None and objective != "mtt":
        raise HabaError("--experts applies to --objective mtt only")
    # Each objective gets the options it knows; the rest are left to its defaults.
    candidates = {"real_per_class": real_per_class, "views": views, "outer_loop": outer_loop,
                  "inner_loop": inner_loop, "experts": None if experts is None else str(experts),
                  "syn_steps": syn_steps, "expert_epochs": expert_epochs,
                  "max_start_epoch": max_start_epoch, "lr_lr": lr_lr, "batch_syn": batch_syn,
                  "unroll": unroll}
    settings = {k: v for k, v in candidates.items()
                if k in objective_class.defaults and (v is not None or k == "experts")}
    config = DistillConfig(
        objective=objective,
        objective_settings=settings,
        codec=codec or DEFAULT_CODEC,
        ipc=ipc,
        counts=budget_counts,
        factor=factor,
        hallucinators=hallucinators,
        hallucinator_arch=hallucinator_arch,
        hidden=hallucinator_hidden,
        kernel=hallucinator_kernel,
        leftover=leftover,
        iterations=defaults.iterations if iterations is None else iterations,
        lr_bases=defaults.lr_bases if lr_bases is None else lr_bases,
        lr_hallucinators=defaults.lr_hallucinators if lr_hallucinators is None else lr_hallucinators,
        momentum=defaults.momentum if momentum is None else momentum,
        init=init,
        augment=defaults.augment if augment is None else augment,
        contrastive=contrastive,
        contrastive_settings={"weight": contrast_weight, "lr": extractor_lr, "batch": contrast_batch},
        seed=seed,
        device=device,
        checkpoint_every=checkpoint_every,
    )
    if threads:
        torch.set_num_threads(threads)
    source = load_source(data, root=str(root) if root else None, download=download)
    distiller = Distiller(source, config)
    header = [f"[bold]{source.name}[/]: {distiller.plan.summary()}",
              f"{objective}, {config.iterations} iterations, "
              + (f"{distiller.objective.settings['syn_steps']} student steps per iteration, "
                 if objective == "mtt"
                 else f"{distiller.objective.settings['real_per_class']} real images per class, ") +
              f"contrastive term {'on' if distiller.contrast else 'off'}, device {distiller.device.type}"]
    metrics = log_file if log_file is not None else (target.with_name(target.name + ".jsonl") if log else None)
    try:
        result = distiller.run(target, force=force, resume=resume, checkpoint_path=checkpoint,
                               log=metrics, reporter=None if quiet else RichReporter(stderr, header))
    except Interrupted as stop:
        print(f"habactl: interrupted after iteration {stop.iteration}; checkpoint: {stop.checkpoint}; "
              f"run the same command with --resume to continue", file=sys.stderr)
        raise typer.Exit(130) from None
    if not quiet:
        if result.resumed_from:
            stderr.print(f"resumed at iteration {result.resumed_from}")
        if metrics is not None:
            stderr.print(f"metrics: {metrics}")
        report_written(result.path, time.perf_counter() - started)


def _random_selection(source: Any, target: Path, *, ipc: int, seed: int, force: bool) -> Path:
    """The coreset baseline: `ipc` random real images per class, stored as they are."""
    from habactl.archive_io import write_haba
    from habactl.baselines import random_per_class
    from habactl.codecs import Pipeline
    from habactl.normalization import Normalizer, mean_std

    normalization = mean_std(source.mean(), source.std())
    indices = random_per_class(source.train.labels, ipc, source.num_classes, seed)
    bases = Normalizer(normalization)(source.train.images[indices])
    labels = source.train.labels[indices].long()
    pipeline = Pipeline.from_manifest([], tuple(bases.shape[1:]))
    return write_haba(
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


def report_written(path: Path, seconds: float) -> None:
    """What a user wants after a compress: the account, the time, what to do next."""
    from habactl.format import open_archive, storage_account

    with open_archive(path) as archive:
        account = storage_account(archive.manifest)
    parts = account["parts"]
    split = (f"bases {parts['bases']['values']:,} + hallucinators {parts['hallucinators']['values']:,}; "
             if parts["hallucinators"]["values"] else "")
    stderr.print(
        f"[bold green]wrote[/] {path}  "
        f"({account['stored_values']:,} stored values = {split}{account['ratio']:.2f}× the budget "
        f"of {account['budget_values']:,}; {path.stat().st_size:,} bytes; {seconds:.1f} s)"
    )
    if account["counts"] == "bases":
        stderr.print(f"note: {account['note']}; claimed {account['claim_ratio']:.2f}×, "
                     f"true {account['ratio']:.2f}×")
    stderr.print(
        f"next: habactl inspect {path}  ·  habactl preview {path} -o {path.with_suffix('.png')}"
        f"  ·  habactl evaluate {path} --fast"
    )
