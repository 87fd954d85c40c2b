"""`habactl compress`: make a .haba archive from a data set.

A thin shell over the library. Settings come from the defaults, then a recipe file
(``--config``), then the flags given; each objective declares which of its settings
the command line offers (``Objective.Settings``), each stage its options
(``Stage.options``), so an option that does not apply to the chosen objective is an
error that says so. Every output location is checked before any data is loaded.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer

from habactl.cli.app import app, guarded, plural, stderr
from habactl.errors import HabaError

DEFAULT_SOURCE = "mnist-5k"
DEFAULT_OBJECTIVE = "dm"
DEFAULT_CODEC = "haba+idc"
FILE_SUFFIXES = (".npz", ".h5", ".hdf5")

_DISTILL = "Distillation"
_BUDGET = "Budget and codec"
_RUN = "Run control"

# Parameters -> DistillConfig fields (the engine's own settings, for every objective).
ENGINE = {
    "ipc": "ipc",
    "budget_bytes": "budget_bytes",
    "quantize": "quantize",
    "quantize_granularity": "quantize_granularity",
    "frequency": "frequency",
    "frequency_mask": "frequency_mask",
    "budget_counts": "counts",
    "leftover": "leftover",
    "iterations": "iterations",
    "lr_bases": "lr_bases",
    "lr_hallucinators": "lr_hallucinators",
    "momentum": "momentum",
    "init": "init",
    "hallucinator_noise": "hallucinator_noise",
    "augment": "augment",
    "contrastive": "contrastive",
    "seed": "seed",
    "device": "device",
    "checkpoint_every": "checkpoint_every",
    "classes_per_iteration": "classes_per_iteration",
}
# Parameters -> the contrastive term's settings.
CONTRAST = {"contrast_weight": "weight", "extractor_lr": "lr", "contrast_batch": "batch"}
# What applies whatever the objective: where the data and the archive are, and how to run.
ALWAYS = (
    "data",
    "output",
    "config",
    "objective",
    "ipc",
    "codec",
    "seed",
    "root",
    "download",
    "images_key",
    "labels_key",
    "force",
    "quiet",
)


@app.command()
@guarded
def compress(
    ctx: typer.Context,
    data: str = typer.Argument(
        DEFAULT_SOURCE,
        help="Data set: an embedded name (mnist-5k, digits), a torchvision name "
        "(mnist, fashion-mnist, kmnist, cifar10, cifar100, svhn) with --root, "
        "an ImageFolder directory, an .h5/.npz file, or a store (habactl prepare; "
        "read lazily: any size).",
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Archive to write \\[default: <data>.haba in the current folder].",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="A recipe file (TOML) with any of these settings; flags given "
        "here override it. habactl inspect A.haba --recipe prints the one that rebuilds A.",
    ),
    objective: str = typer.Option(
        DEFAULT_OBJECTIVE,
        "--objective",
        help="How the synthetic set is made: dm (distribution matching), dc (gradient matching), "
        "dsa (gradient matching with Siamese augmentation), mtt (trajectory matching; needs "
        "--experts) or random (real images). An option that does not apply to it is an error.",
    ),
    ipc: int = typer.Option(
        1,
        "--ipc",
        min=1,
        help="Budget: images per class; N means N float32 images' bytes per class.",
        rich_help_panel=_BUDGET,
    ),
    budget_bytes: int | None = typer.Option(
        None,
        "--budget-bytes",
        min=1,
        help="Budget in bytes for the whole archive's synthetic set, instead of --ipc "
        "(every stored byte counts; the archive records the smallest IPC that holds it).",
        rich_help_panel=_BUDGET,
    ),
    codec: str | None = typer.Option(
        None,
        "--codec",
        help="What is stored: raw images, idc (low-resolution bases), haba "
        "(bases x hallucinators) or haba+idc \\[default: haba+idc; raw for --objective random].",
        rich_help_panel=_BUDGET,
    ),
    frequency: int | None = typer.Option(
        None,
        "--frequency",
        min=1,
        help="Store the bases as K DCT coefficients per channel (FreD); the kept "
        "frequencies (a stored mask) are those of most energy in the real images. Any codec.",
        rich_help_panel=_BUDGET,
    ),
    frequency_mask: str = typer.Option(
        "shared",
        "--frequency-mask",
        help="With --frequency: one mask of kept frequencies for all classes (shared), or "
        "one per class, each chosen on its own class's images (per-class; stored and "
        "counted: classes x C x H x W bytes).",
        rich_help_panel=_BUDGET,
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="Store the bases at lower precision: float16, bfloat16, uint8 or uint4 (two "
        "codes a byte); distillation trains through the rounding. Any codec.",
        rich_help_panel=_BUDGET,
    ),
    quantize_granularity: str = typer.Option(
        "tensor",
        "--quantize-granularity",
        help="One scale and zero-point for all bases (tensor) or one per channel (uint8, uint4).",
        rich_help_panel=_BUDGET,
    ),
    budget_counts: str = typer.Option(
        "all",
        "--budget-counts",
        help="What the budget is charged with: all stored values, or "
        "bases only (the reference code's counting; hallucinators ride free).",
        rich_help_panel=_BUDGET,
    ),
    factor: int | None = typer.Option(
        None,
        "--factor",
        min=1,
        help="IDC downsampling factor of the bases \\[default: 2].",
        rich_help_panel=_BUDGET,
    ),
    hallucinators: int = typer.Option(
        5, "--hallucinators", min=1, help="Number of hallucinators.", rich_help_panel=_BUDGET
    ),
    hallucinator_arch: str = typer.Option(
        "channel-affine",
        "--hallucinator-arch",
        help="channel-affine (a few dozen values each) or pixel-affine (the reference design).",
        rich_help_panel=_BUDGET,
    ),
    hallucinator_hidden: int = typer.Option(
        3,
        "--hallucinator-hidden",
        min=1,
        help="Hidden channels of a hallucinator.",
        rich_help_panel=_BUDGET,
    ),
    hallucinator_kernel: int = typer.Option(
        3,
        "--hallucinator-kernel",
        min=1,
        help="Kernel size of a hallucinator (odd).",
        rich_help_panel=_BUDGET,
    ),
    leftover: str = typer.Option(
        "bases",
        "--leftover",
        help="Budget left after equal bases per class: bases (one more "
        "basis for the most varied classes) or none.",
        rich_help_panel=_BUDGET,
    ),
    iterations: int | None = typer.Option(
        None,
        "--iterations",
        min=0,
        help="Distillation iterations \\[default: 300].",
        rich_help_panel=_DISTILL,
    ),
    classes_per_iteration: int | None = typer.Option(
        None,
        "--classes-per-iteration",
        min=1,
        help="dm, dc, dsa: match K random classes per iteration instead of all "
        "(for many classes) \\[default: all].",
        rich_help_panel=_DISTILL,
    ),
    real_per_class: int | None = typer.Option(
        None,
        "--real-per-class",
        min=1,
        help="Real images per class per iteration \\[default: dm 32; dc, dsa 64].",
        rich_help_panel=_DISTILL,
    ),
    views: int | None = typer.Option(
        None,
        "--views",
        min=0,
        help="Hallucinations per basis per iteration, 0 = all \\[default: dm 1; dc, dsa 0].",
        rich_help_panel=_DISTILL,
    ),
    outer_loop: int | None = typer.Option(
        None,
        "--outer-loop",
        min=1,
        help="dc/dsa: matches per network \\[default: by IPC, as the reference].",
        rich_help_panel=_DISTILL,
    ),
    inner_loop: int | None = typer.Option(
        None,
        "--inner-loop",
        min=0,
        help="dc/dsa: network epochs on the synthetic set between matches \\[default: by IPC].",
        rich_help_panel=_DISTILL,
    ),
    experts: Path | None = typer.Option(
        None,
        "--experts",
        help="mtt: the experts buffer (make one with habactl experts).",
        rich_help_panel=_DISTILL,
    ),
    syn_steps: int | None = typer.Option(
        None,
        "--syn-steps",
        min=1,
        help="mtt: student steps per iteration \\[default: 20].",
        rich_help_panel=_DISTILL,
    ),
    expert_epochs: int | None = typer.Option(
        None,
        "--expert-epochs",
        min=1,
        help="mtt: expert epochs to match (M) \\[default: 2].",
        rich_help_panel=_DISTILL,
    ),
    max_start_epoch: int | None = typer.Option(
        None,
        "--max-start-epoch",
        min=1,
        help="mtt: students start below this epoch \\[default: min(20, buffer epochs - M + 1)].",
        rich_help_panel=_DISTILL,
    ),
    lr_lr: float | None = typer.Option(
        None,
        "--lr-lr",
        help="mtt: learning rate of the learned learning rate \\[default: 1e-5].",
        rich_help_panel=_DISTILL,
    ),
    batch_syn: int | None = typer.Option(
        None,
        "--batch-syn",
        min=0,
        help="mtt: bases per student step (0: all) \\[default: 0].",
        rich_help_panel=_DISTILL,
    ),
    unroll: str | None = typer.Option(
        None,
        "--unroll",
        help="mtt: recompute (one step's graph in memory at a time) or full "
        "\\[default: recompute].",
        rich_help_panel=_DISTILL,
    ),
    lr_bases: float | None = typer.Option(
        None,
        "--lr-bases",
        help="SGD learning rate of the bases \\[default: 1.0 for dm, 0.1 for dc/dsa, 100 for mtt].",
        rich_help_panel=_DISTILL,
    ),
    lr_hallucinators: float | None = typer.Option(
        None,
        "--lr-hallucinators",
        help="SGD learning rate of the hallucinators \\[default: 0.001].",
        rich_help_panel=_DISTILL,
    ),
    momentum: float | None = typer.Option(
        None,
        "--momentum",
        help="SGD momentum of the stored tensors \\[default: 0.5].",
        rich_help_panel=_DISTILL,
    ),
    init: str = typer.Option(
        "real", "--init", help="Bases start as real images or noise.", rich_help_panel=_DISTILL
    ),
    augment: str | None = typer.Option(
        None,
        "--augment",
        help="Siamese augmentation ops joined by _ (no flip on digit data), or none "
        "\\[default: color_crop_cutout_flip_scale_rotate; none for dc].",
        rich_help_panel=_DISTILL,
    ),
    contrastive: bool | None = typer.Option(
        None,
        "--contrastive/--no-contrastive",
        help="HaBa's adversarial contrastive term \\[default: on when there are hallucinators].",
        rich_help_panel=_DISTILL,
    ),
    contrast_weight: float = typer.Option(
        0.1,
        "--contrast-weight",
        help="Weight of the cosine penalty on the synthetic side.",
        rich_help_panel=_DISTILL,
    ),
    extractor_lr: float = typer.Option(
        1e-3,
        "--extractor-lr",
        help="SGD learning rate of the contrastive feature extractor.",
        rich_help_panel=_DISTILL,
    ),
    contrast_batch: int = typer.Option(
        32,
        "--contrast-batch",
        min=0,
        help="Bases per iteration in the contrastive term (0: all).",
        rich_help_panel=_DISTILL,
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda.", rich_help_panel=_RUN),
    threads: int = typer.Option(
        0,
        "--threads",
        min=0,
        help="CPU threads for torch (0: torch's default, one per core). Results "
        "depend on it (it is recorded); on a CPU busy with other work, 1 is often much faster.",
        rich_help_panel=_RUN,
    ),
    checkpoint_every: int = typer.Option(
        50,
        "--checkpoint-every",
        min=1,
        help="Iterations between checkpoints.",
        rich_help_panel=_RUN,
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Checkpoint file \\[default: <output>.ckpt].",
        rich_help_panel=_RUN,
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from the checkpoint if there is one, else start from the beginning "
        "(with a note): the same command serves a first run and every restart "
        "(torchrun --max-restarts).",
        rich_help_panel=_RUN,
    ),
    log: bool = typer.Option(
        False, "--log", help="Write a JSONL metrics log next to the output.", rich_help_panel=_RUN
    ),
    log_file: Path | None = typer.Option(
        None,
        "--log-file",
        help="Write the JSONL metrics log here (implies --log).",
        rich_help_panel=_RUN,
    ),
    root: Path | None = typer.Option(None, "--root", help="Folder holding torchvision data sets."),
    download: bool = typer.Option(
        False, "--download", help="Let torchvision download (needs a network)."
    ),
    images_key: str | None = typer.Option(
        None, "--images-key", help="The images' dataset in an .h5/.npz file \\[default: images]."
    ),
    labels_key: str | None = typer.Option(
        None, "--labels-key", help="The labels' dataset in an .h5/.npz file \\[default: labels]."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
) -> None:
    """Compress DATA into a .haba archive (default: HaBa + distribution matching on mnist-5k,
    IPC 1)."""
    values = {name: value for name, value in locals().items() if name != "ctx"}
    given = {name for name in values if _given(ctx, name)}
    recipe: dict[str, Any] = {}
    if config is not None:
        from habactl.distill.recipe_file import load_recipe

        recipe = load_recipe(config)
    settings = _merge(values, given, recipe)
    surface = _objective_surface(settings["objective"])
    _check_applicable(settings, given, recipe, surface)
    if settings["budget_bytes"] is not None and "ipc" in given | set(recipe):
        raise HabaError("give the budget as --ipc or as --budget-bytes, not both")
    if settings["quantize"] is None and "quantize_granularity" in given | set(recipe):
        raise HabaError("--quantize-granularity applies with --quantize only")
    if settings["frequency"] is None and "frequency_mask" in given | set(recipe):
        raise HabaError("--frequency-mask applies with --frequency only")
    if settings["frequency_mask"] not in ("shared", "per-class"):
        raise HabaError(
            f"--frequency-mask must be shared or per-class, got {settings['frequency_mask']!r}"
        )
    target = _target(settings)
    if surface is None:
        _compress_random(settings, target)
        return
    _compress_distilled(settings, given, recipe, surface, target)


def _given(ctx: typer.Context, name: str) -> bool:
    """True when the user set the parameter (on the command line), not its default."""
    source = ctx.get_parameter_source(name)  # an enum of click's (typer vendors click)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _merge(values: dict[str, Any], given: set[str], recipe: dict[str, Any]) -> dict[str, Any]:
    """Flags given > the recipe's plain keys > the flags' defaults."""
    known = set(values) | {"hallucinator_noise", "pipeline", "settings", "contrastive_settings"}
    unknown = sorted(set(recipe) - known - {"config"})
    if unknown or "config" in recipe:
        raise HabaError(
            f"--config: unknown setting {(unknown or ['config'])[0]!r} (settings are "
            "the compress options' names with _ for -, e.g. lr_bases)"
        )
    merged = dict(values)
    for name, value in recipe.items():
        if name not in given and name in values:
            merged[name] = _coerce(name, value, values[name])
    merged["hallucinator_noise"] = recipe.get("hallucinator_noise")
    return merged


def _coerce(name: str, value: Any, default: Any) -> Any:
    """A recipe value in the type its flag takes (TOML has no paths; 1 may mean 1.0)."""
    annotation = str(compress.__annotations__.get(name, ""))
    flag = "--" + name.replace("_", "-")
    if "Path" in annotation and isinstance(value, str):
        return Path(value)
    if "float" in annotation and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if "int" in annotation and (isinstance(value, bool) or not isinstance(value, int)):
        raise HabaError(f"--config: {name} must be an integer ({flag}), got {value!r}")
    if "bool" in annotation and not isinstance(value, bool):
        raise HabaError(f"--config: {name} must be true or false ({flag}), got {value!r}")
    if "str" in annotation and not isinstance(value, str):
        raise HabaError(f"--config: {name} must be a string ({flag}), got {value!r}")
    return value


def _objective_surface(name: str) -> Any:
    """The chosen objective's class (None for the random baseline), from the registry."""
    from habactl.distill.objectives import OBJECTIVES

    if name == "random":
        return None
    if name not in OBJECTIVES:
        raise HabaError(f"unknown objective {name!r} (known: {', '.join([*OBJECTIVES, 'random'])})")
    return OBJECTIVES[name]


def _objective_flags() -> dict[str, list[str]]:
    """Parameter name -> the objectives whose settings the command line offers under it."""
    from habactl.distill.objectives import OBJECTIVES

    owners: dict[str, list[str]] = {}
    for name, cls in OBJECTIVES.items():
        for flag in cls.options():
            owners.setdefault(flag.lstrip("-").replace("-", "_"), []).append(name)
    return owners


def _check_applicable(
    settings: dict[str, Any], given: set[str], recipe: dict[str, Any], surface: Any
) -> None:
    """One rule: an option set (by flag or recipe) that the objective does not use is an error."""
    chosen = settings["objective"]
    chosen_set = given | set(recipe)
    if surface is None:
        if settings["codec"] not in (None, "raw"):
            raise HabaError(
                "--objective random keeps real images as they are: only --codec raw applies"
            )
        for name in sorted(chosen_set - set(ALWAYS)):
            raise HabaError(
                f"{_flag(name)} does not apply to --objective random (it keeps real "
                "images as they are; nothing is optimised)"
            )
        return
    owners = _objective_flags()
    for name in sorted(chosen_set):
        if name in owners and chosen not in owners[name]:
            raise HabaError(f"{_flag(name)} applies to --objective {', '.join(owners[name])} only")
    unknown = sorted(set(recipe.get("settings", {})) - set(surface.defaults))
    if unknown:
        raise HabaError(
            f"--config: objective {chosen} has no setting {unknown[0]!r} "
            f"(its settings: {', '.join(surface.defaults)})"
        )


def _flag(name: str) -> str:
    return (
        "--" + name.replace("_", "-")
        if name
        not in ("data", "pipeline", "settings", "contrastive_settings", "hallucinator_noise")
        else name
    )


def _target(settings: dict[str, Any]) -> Path:
    """The archive's path: -o, or <data>.haba in the current folder (never inside DATA)."""
    output = settings["output"]
    if output is not None:
        output = Path(output)
        if output.suffix.lower() != ".haba" and not output.is_dir():
            raise HabaError(
                f"-o {output}: an archive's name ends in .haba (e.g. -o "
                f"{output.with_suffix('.haba').name})"
            )
        return output
    data = Path(str(settings["data"]))
    name = data.name if data.name not in ("", ".", "..") else data.resolve().name
    if data.suffix.lower() in FILE_SUFFIXES or data.suffix.lower() == ".store":
        name = data.stem
    return Path(f"{name or 'data'}.haba")


def _load(settings: dict[str, Any]) -> Any:
    """The data: a store (read lazily), or a source loaded into memory."""
    from habactl.data.opening import open_data

    options = {k: settings[k] for k in ("images_key", "labels_key") if settings[k] is not None}
    root = settings["root"]
    return open_data(
        settings["data"], root=str(root) if root else None, download=settings["download"], **options
    )


def _compress_random(settings: dict[str, Any], target: Path) -> None:
    from habactl import distributed
    from habactl.baselines import random_archive
    from habactl.distill.engine import check_archive_target

    # Nothing to split under torchrun: rank 0 picks and writes the archive of one process
    # while the others wait (checking the target too could see rank 0's new file).
    if not distributed.is_main():
        distributed.barrier()
        return
    check_archive_target(target, force=settings["force"])
    started = time.perf_counter()
    source = _load(settings)
    path = random_archive(
        source, target, ipc=settings["ipc"], seed=settings["seed"], overwrite=settings["force"]
    )
    distributed.barrier()
    if not settings["quiet"]:
        report_written(path, time.perf_counter() - started)


def _compress_distilled(
    settings: dict[str, Any], given: set[str], recipe: dict[str, Any], surface: Any, target: Path
) -> None:
    import torch

    from habactl.distill import Distiller, Interrupted
    from habactl.distill.engine import check_outputs
    from habactl.distill.progress import RichReporter

    s = settings
    metrics = (
        s["log_file"]
        if s["log_file"] is not None
        else (target.with_name(target.name + ".jsonl") if s["log"] else None)
    )
    checkpoint = check_outputs(
        target, checkpoint=s["checkpoint"], log=metrics, force=s["force"], resume=s["resume"]
    )
    if s["resume"] and not checkpoint.is_file() and not s["quiet"]:
        print(
            f"habactl: no checkpoint at {checkpoint} yet: starting from iteration 0",
            file=sys.stderr,
        )
    started = time.perf_counter()
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    source = _load(s)
    config = _config(s, given, recipe, surface)
    distiller = Distiller(source, config)
    try:
        reporter = None if s["quiet"] else RichReporter(stderr, _header(source.name, distiller))
        result = distiller.run(
            target,
            force=s["force"],
            resume=s["resume"],
            checkpoint_path=s["checkpoint"],
            log=metrics,
            reporter=reporter,
        )
    except Interrupted as stop:
        print(
            f"habactl: interrupted after iteration {stop.iteration}; "
            f"checkpoint: {stop.checkpoint}; "
            f"run the same command with --resume to continue",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    from habactl import distributed

    if not s["quiet"] and distributed.is_main():  # under torchrun rank 0 wrote the archive
        if result.resumed_from:
            stderr.print(f"resumed at iteration {result.resumed_from}")
        if metrics is not None:
            stderr.print(f"metrics: {metrics}")
        report_written(result.path, time.perf_counter() - started)


def _config(s: dict[str, Any], given: set[str], recipe: dict[str, Any], surface: Any) -> Any:
    """The DistillConfig: engine settings (the objective's engine defaults where nothing
    was set), the objective's settings, the pipeline as manifest entries."""
    from habactl.distill import DistillConfig

    chosen = given | set(recipe)
    engine: dict[str, Any] = {}
    for name, field_name in ENGINE.items():
        value = s.get(name)
        if name in chosen and value is not None:
            engine[field_name] = value
        elif field_name in surface.engine_defaults:
            engine[field_name] = surface.engine_defaults[field_name]
        elif value is not None:
            engine[field_name] = value
    flags = {flag.lstrip("-").replace("-", "_"): key for flag, key in surface.options().items()}
    objective_settings = dict(recipe.get("settings", {}))
    objective_settings.update(
        {key: s[name] for name, key in flags.items() if name in chosen and s[name] is not None}
    )
    if "experts" in objective_settings:
        objective_settings["experts"] = str(objective_settings["experts"])
    contrast = {
        **recipe.get("contrastive_settings", {}),
        **{
            CONTRAST[n]: s[n]
            for n in CONTRAST
            if n in given or "contrastive_settings" not in recipe
        },
    }
    return DistillConfig(
        objective=s["objective"],
        objective_settings=objective_settings,
        pipeline=_pipeline(s, given, recipe),
        codec=s["codec"] or DEFAULT_CODEC,
        factor=s["factor"],
        hallucinators=s["hallucinators"],
        hallucinator_arch=s["hallucinator_arch"],
        hidden=s["hallucinator_hidden"],
        kernel=s["hallucinator_kernel"],
        contrastive_settings=contrast,
        **engine,
    )


def _stage_flags() -> dict[str, tuple[str, str]]:
    """Parameter name -> (stage, configuration key), from the stages' declared options."""
    from habactl.codecs.registry import STAGES

    return {
        opt.flag.lstrip("-").replace("-", "_"): (name, opt.key)
        for name, cls in STAGES.items()
        for opt in cls.options
        if opt.flag
    }


def _pipeline(s: dict[str, Any], given: set[str], recipe: dict[str, Any]) -> Any:
    """The recipe's pipeline entries with any stage flag given applied; None (the codec
    preset) when there is no such recipe or --codec was given."""
    if "pipeline" not in recipe or "codec" in given:
        return None
    entries = [
        dict(entry, configuration=dict(entry.get("configuration", {})))
        for entry in recipe["pipeline"]
    ]
    for name, (stage, key) in _stage_flags().items():
        if name not in given:
            continue
        matching = [e for e in entries if e.get("name") == stage]
        if not matching:
            raise HabaError(
                f"{_flag(name)} does not apply: the recipe's pipeline has no {stage} stage"
            )
        for entry in matching:
            entry["configuration"][key] = s[name]
    return tuple(entries)


def _header(name: str, distiller: Any) -> list[str]:
    """Two lines for people: the plan, then the objective and its command-line settings."""
    objective = distiller.objective
    shown = [
        f"{key.replace('_', ' ')} {objective.settings[key]}"
        for key in type(objective).options().values()
        if key != "experts" and objective.settings.get(key) is not None
    ]
    return [
        f"[bold]{name}[/]: {distiller.plan.summary()}",
        f"{objective.name} ({type(objective).summary}), "
        f"{plural(distiller.config.iterations, 'iteration')}"
        + "".join(f", {item}" for item in shown)
        + f", contrastive term {'on' if distiller.contrast else 'off'}, "
        f"device {distiller.device.type}",
    ]


def report_written(path: Path, seconds: float) -> None:
    """What a user wants after a compress: the account, the time, what to do next."""
    from habactl.format import open_archive, storage_account

    with open_archive(path) as archive:
        account = storage_account(archive.manifest).to_json()
    parts = account["parts"]
    split = (
        f"bases {parts['bases']['values']:,} + hallucinators {parts['hallucinators']['values']:,}; "
        if parts["hallucinators"]["values"]
        else ""
    )
    stderr.print(
        f"[bold green]wrote[/] {path}  "
        f"({account['stored_values']:,} stored values = {split}"
        f"{account['counted_bytes']:,} bytes, {account['ratio_bytes']:.2f}× the budget "
        f"of {account['budget_bytes']:,} bytes; file {path.stat().st_size:,} bytes; "
        f"{seconds:.1f} s)"
    )
    if account["counts"] == "bases":
        stderr.print(
            f"note: {account['note']}; claimed {account['claim_ratio']:.2f}×, "
            f"true {account['ratio']:.2f}×"
        )
    stderr.print(
        f"next: habactl inspect {path}  ·  habactl preview {path} -o {path.with_suffix('.png')}"
        f"  ·  habactl evaluate {path} --fast"
    )
