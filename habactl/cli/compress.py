"""`habactl compress`: make a .haba archive from a data set.

A thin shell over the library. Settings come from the defaults, then a config file
(``--config``), then the flags given; each objective declares which of its settings
the command line offers (``Objective.Settings``), each stage its options
(``Stage.options``), so an option that does not apply to the chosen objective is an
error that says so. Every output location is checked before any data is loaded.
"""

from __future__ import annotations

import sys
import time
import typing
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from habactl.cli.app import app, guarded, plural, stderr
from habactl.cli.options import Quiet, Root, Seed
from habactl.codecs.spec import HALLUCINATE_DEFAULTS, UPSAMPLE_DEFAULTS  # torch-free
from habactl.errors import HabaError

DEFAULT_SOURCE = "mnist-5k"
DEFAULT_OBJECTIVE = "dm"
DEFAULT_CODEC = "haba+idc"
FILE_SUFFIXES = (".npz", ".h5", ".hdf5")

_DISTILL = "Distillation"
_BUDGET = "Budget and codec"
_RUN = "Run control"

# The DistillConfig fields whose option has another name; every other DistillConfig field
# is set from the option of its own name (the engine's settings, for every objective).
RENAMED = {
    "budget_counts": "counts",
    "hallucinator_hidden": "hidden",
    "hallucinator_kernel": "kernel",
}
# DistillConfig fields that _config sets itself rather than from one option.
COMPOSED = ("objective_settings", "pipeline", "codec", "contrastive_settings")
# Parameters -> the contrastive term's settings.
CONTRAST = {"contrast_weight": "weight", "extractor_lr": "lr", "contrast_batch": "batch"}
# What applies whatever the objective or baseline: where the data and the archive are,
# and how to run.
ALWAYS = (
    "data",
    "output",
    "config",
    "objective",
    "root",
    "download",
    "images_key",
    "labels_key",
    "force",
    "quiet",
)


Data = Annotated[
    str,
    typer.Argument(
        help="Data set: an embedded name (mnist-5k, digits), a torchvision name "
        "(mnist, fashion-mnist, kmnist, cifar10, cifar100, svhn) with --root, "
        "an ImageFolder directory, an .h5/.npz file, or a store (habactl prepare; "
        "read lazily: any size)."
    ),
]
Output = Annotated[
    Path | None,
    typer.Option(
        "-o", "--output", help="Archive to write \\[default: <data>.haba in the current folder]."
    ),
]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A config file (TOML) with any of these settings; flags given "
        "here override it. habactl inspect A.haba --config prints the one that rebuilds A.",
    ),
]
Objective = Annotated[
    str,
    typer.Option(
        "--objective",
        help="How the synthetic set is made: dm (distribution matching), dc (gradient matching), "
        "dsa (gradient matching with Siamese augmentation), mtt (trajectory matching; needs "
        "--experts) or random (real images). An option that does not apply to it is an error.",
    ),
]
Ipc = Annotated[
    int,
    typer.Option(
        "--ipc",
        min=1,
        help="Budget: images per class; N means N float32 images' bytes per class.",
        rich_help_panel=_BUDGET,
    ),
]
BudgetBytes = Annotated[
    int | None,
    typer.Option(
        "--budget-bytes",
        min=1,
        help="Budget in bytes for the whole archive's synthetic set, instead of --ipc "
        "(every stored byte counts; the archive records the smallest IPC that holds it).",
        rich_help_panel=_BUDGET,
    ),
]
Codec = Annotated[
    str | None,
    typer.Option(
        "--codec",
        help="What is stored: raw images, idc (low-resolution bases), haba "
        "(bases x hallucinators) or haba+idc \\[default: haba+idc; raw for --objective random].",
        rich_help_panel=_BUDGET,
    ),
]
Frequency = Annotated[
    int | None,
    typer.Option(
        "--frequency",
        min=1,
        help="Store the bases as K DCT coefficients per channel (FreD); the kept "
        "frequencies (a stored mask) are those of most energy in the real images. Any codec.",
        rich_help_panel=_BUDGET,
    ),
]
FrequencyMask = Annotated[
    str,
    typer.Option(
        "--frequency-mask",
        help="With --frequency: one mask of kept frequencies for all classes (shared), or "
        "one per class, each chosen on its own class's images (per-class; stored and "
        "counted: classes x C x H x W bytes).",
        rich_help_panel=_BUDGET,
    ),
]
Quantize = Annotated[
    str | None,
    typer.Option(
        "--quantize",
        help="Store the bases at lower precision: float16, bfloat16, uint8 or uint4 (two "
        "codes a byte); distillation trains through the rounding. Any codec.",
        rich_help_panel=_BUDGET,
    ),
]
QuantizeGranularity = Annotated[
    str,
    typer.Option(
        "--quantize-granularity",
        help="One scale and zero-point for all bases (tensor) or one per channel (uint8, uint4).",
        rich_help_panel=_BUDGET,
    ),
]
BudgetCounts = Annotated[
    str,
    typer.Option(
        "--budget-counts",
        help="What the budget is charged with: all stored values, or "
        "bases only (the reference code's counting; hallucinators ride free).",
        rich_help_panel=_BUDGET,
    ),
]
Factor = Annotated[
    int | None,
    typer.Option(
        "--factor",
        min=1,
        help=f"IDC downsampling factor of the bases \\[default: {UPSAMPLE_DEFAULTS['factor']}].",
        rich_help_panel=_BUDGET,
    ),
]
Hallucinators = Annotated[
    int,
    typer.Option(
        "--hallucinators", min=1, help="Number of hallucinators.", rich_help_panel=_BUDGET
    ),
]
HallucinatorArch = Annotated[
    str,
    typer.Option(
        "--hallucinator-arch",
        help="channel-affine (a few dozen values each) or pixel-affine (the reference design).",
        rich_help_panel=_BUDGET,
    ),
]
HallucinatorHidden = Annotated[
    int,
    typer.Option(
        "--hallucinator-hidden",
        min=1,
        help="Hidden channels of a hallucinator.",
        rich_help_panel=_BUDGET,
    ),
]
HallucinatorKernel = Annotated[
    int,
    typer.Option(
        "--hallucinator-kernel",
        min=1,
        help="Kernel size of a hallucinator (odd).",
        rich_help_panel=_BUDGET,
    ),
]
Leftover = Annotated[
    str,
    typer.Option(
        "--leftover",
        help="Budget left after equal bases per class: bases (one more "
        "basis for the most varied classes) or none.",
        rich_help_panel=_BUDGET,
    ),
]
Iterations = Annotated[
    int | None,
    typer.Option(
        "--iterations",
        min=0,
        help="Distillation iterations \\[default: 300].",
        rich_help_panel=_DISTILL,
    ),
]
ClassesPerIteration = Annotated[
    int | None,
    typer.Option(
        "--classes-per-iteration",
        min=1,
        help="dm, dc, dsa: match K random classes per iteration instead of all "
        "(for many classes) \\[default: all].",
        rich_help_panel=_DISTILL,
    ),
]
RealPerClass = Annotated[
    int | None,
    typer.Option(
        "--real-per-class",
        min=1,
        help="Real images per class per iteration \\[default: dm 32; dc, dsa 64].",
        rich_help_panel=_DISTILL,
    ),
]
Views = Annotated[
    int | None,
    typer.Option(
        "--views",
        min=0,
        help="Hallucinations per basis per iteration, 0 = all \\[default: dm 1; dc, dsa 0].",
        rich_help_panel=_DISTILL,
    ),
]
OuterLoop = Annotated[
    int | None,
    typer.Option(
        "--outer-loop",
        min=1,
        help="dc/dsa: matches per network \\[default: by IPC, as the reference].",
        rich_help_panel=_DISTILL,
    ),
]
InnerLoop = Annotated[
    int | None,
    typer.Option(
        "--inner-loop",
        min=0,
        help="dc/dsa: network epochs on the synthetic set between matches \\[default: by IPC].",
        rich_help_panel=_DISTILL,
    ),
]
Experts = Annotated[
    Path | None,
    typer.Option(
        "--experts",
        help="mtt: the experts buffer (make one with habactl experts).",
        rich_help_panel=_DISTILL,
    ),
]
SynSteps = Annotated[
    int | None,
    typer.Option(
        "--syn-steps",
        min=1,
        help="mtt: student steps per iteration \\[default: 20].",
        rich_help_panel=_DISTILL,
    ),
]
ExpertEpochs = Annotated[
    int | None,
    typer.Option(
        "--expert-epochs",
        min=1,
        help="mtt: expert epochs to match (M) \\[default: 2].",
        rich_help_panel=_DISTILL,
    ),
]
MaxStartEpoch = Annotated[
    int | None,
    typer.Option(
        "--max-start-epoch",
        min=1,
        help="mtt: students start below this epoch \\[default: min(20, buffer epochs - M + 1)].",
        rich_help_panel=_DISTILL,
    ),
]
LrLr = Annotated[
    float | None,
    typer.Option(
        "--lr-lr",
        help="mtt: learning rate of the learned learning rate \\[default: 1e-5].",
        rich_help_panel=_DISTILL,
    ),
]
BatchSyn = Annotated[
    int | None,
    typer.Option(
        "--batch-syn",
        min=0,
        help="mtt: bases per student step (0: all) \\[default: 0].",
        rich_help_panel=_DISTILL,
    ),
]
Unroll = Annotated[
    str | None,
    typer.Option(
        "--unroll",
        help="mtt: recompute (one step's graph in memory at a time) or full "
        "\\[default: recompute].",
        rich_help_panel=_DISTILL,
    ),
]
LrBases = Annotated[
    float | None,
    typer.Option(
        "--lr-bases",
        help="SGD learning rate of the bases \\[default: 1.0 for dm, 0.1 for dc/dsa, 100 for mtt].",
        rich_help_panel=_DISTILL,
    ),
]
LrHallucinators = Annotated[
    float | None,
    typer.Option(
        "--lr-hallucinators",
        help="SGD learning rate of the hallucinators \\[default: 0.001].",
        rich_help_panel=_DISTILL,
    ),
]
Momentum = Annotated[
    float | None,
    typer.Option(
        "--momentum",
        help="SGD momentum of the stored tensors \\[default: 0.5].",
        rich_help_panel=_DISTILL,
    ),
]
Init = Annotated[
    str,
    typer.Option("--init", help="Bases start as real images or noise.", rich_help_panel=_DISTILL),
]
Augment = Annotated[
    str | None,
    typer.Option(
        "--augment",
        help="Siamese augmentation ops joined by _ (no flip on digit data), or none "
        "\\[default: color_crop_cutout_flip_scale_rotate; none for dc].",
        rich_help_panel=_DISTILL,
    ),
]
Contrastive = Annotated[
    bool | None,
    typer.Option(
        "--contrastive/--no-contrastive",
        help="HaBa's adversarial contrastive term \\[default: on when there are hallucinators].",
        rich_help_panel=_DISTILL,
    ),
]
ContrastWeight = Annotated[
    float,
    typer.Option(
        "--contrast-weight",
        help="Weight of the cosine penalty on the synthetic side.",
        rich_help_panel=_DISTILL,
    ),
]
ExtractorLr = Annotated[
    float,
    typer.Option(
        "--extractor-lr",
        help="SGD learning rate of the contrastive feature extractor.",
        rich_help_panel=_DISTILL,
    ),
]
ContrastBatch = Annotated[
    int,
    typer.Option(
        "--contrast-batch",
        min=0,
        help="Bases per iteration in the contrastive term (0: all).",
        rich_help_panel=_DISTILL,
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.", rich_help_panel=_RUN)]
Threads = Annotated[
    int,
    typer.Option(
        "--threads",
        min=0,
        help="CPU threads for torch (0: torch's default, one per core). Results "
        "depend on it (it is recorded); on a CPU busy with other work, 1 is often much faster.",
        rich_help_panel=_RUN,
    ),
]
CheckpointEvery = Annotated[
    int,
    typer.Option(
        "--checkpoint-every", min=1, help="Iterations between checkpoints.", rich_help_panel=_RUN
    ),
]
Checkpoint = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint", help="Checkpoint file \\[default: <output>.ckpt].", rich_help_panel=_RUN
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue from the checkpoint if there is one, else start from the beginning "
        "(with a note): the same command serves a first run and every restart "
        "(torchrun --max-restarts).",
        rich_help_panel=_RUN,
    ),
]
Log = Annotated[
    bool,
    typer.Option(
        "--log", help="Write a JSONL metrics log next to the output.", rich_help_panel=_RUN
    ),
]
LogFile = Annotated[
    Path | None,
    typer.Option(
        "--log-file", help="Write the JSONL metrics log here (implies --log).", rich_help_panel=_RUN
    ),
]
Download = Annotated[
    bool, typer.Option("--download", help="Let torchvision download (needs a network).")
]
ImagesKey = Annotated[
    str | None,
    typer.Option(
        "--images-key", help="The images' dataset in an .h5/.npz file \\[default: images]."
    ),
]
LabelsKey = Annotated[
    str | None,
    typer.Option(
        "--labels-key", help="The labels' dataset in an .h5/.npz file \\[default: labels]."
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]


@app.command()
@guarded
def compress(
    ctx: typer.Context,
    data: Data = DEFAULT_SOURCE,
    output: Output = None,
    config: Config = None,
    objective: Objective = DEFAULT_OBJECTIVE,
    ipc: Ipc = 1,
    budget_bytes: BudgetBytes = None,
    codec: Codec = None,
    frequency: Frequency = None,
    frequency_mask: FrequencyMask = "shared",
    quantize: Quantize = None,
    quantize_granularity: QuantizeGranularity = "tensor",
    budget_counts: BudgetCounts = "all",
    factor: Factor = None,
    hallucinators: Hallucinators = HALLUCINATE_DEFAULTS["count"],
    hallucinator_arch: HallucinatorArch = HALLUCINATE_DEFAULTS["arch"],
    hallucinator_hidden: HallucinatorHidden = HALLUCINATE_DEFAULTS["hidden"],
    hallucinator_kernel: HallucinatorKernel = HALLUCINATE_DEFAULTS["kernel"],
    leftover: Leftover = "bases",
    iterations: Iterations = None,
    classes_per_iteration: ClassesPerIteration = None,
    real_per_class: RealPerClass = None,
    views: Views = None,
    outer_loop: OuterLoop = None,
    inner_loop: InnerLoop = None,
    experts: Experts = None,
    syn_steps: SynSteps = None,
    expert_epochs: ExpertEpochs = None,
    max_start_epoch: MaxStartEpoch = None,
    lr_lr: LrLr = None,
    batch_syn: BatchSyn = None,
    unroll: Unroll = None,
    lr_bases: LrBases = None,
    lr_hallucinators: LrHallucinators = None,
    momentum: Momentum = None,
    init: Init = "real",
    augment: Augment = None,
    contrastive: Contrastive = None,
    contrast_weight: ContrastWeight = 0.1,
    extractor_lr: ExtractorLr = 1e-3,
    contrast_batch: ContrastBatch = 32,
    seed: Seed = 0,
    device: Device = "auto",
    threads: Threads = 0,
    checkpoint_every: CheckpointEvery = 50,
    checkpoint: Checkpoint = None,
    resume: Resume = False,
    log: Log = False,
    log_file: LogFile = None,
    root: Root = None,
    download: Download = False,
    images_key: ImagesKey = None,
    labels_key: LabelsKey = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Compress DATA into a .haba archive (default: HaBa + distribution matching on mnist-5k,
    IPC 1)."""
    values = {name: value for name, value in locals().items() if name != "ctx"}
    given = {name for name in values if _given(ctx, name)}
    recipe: dict[str, Any] = {}
    if config is not None:
        from habactl.distill.config_file import load_config

        recipe = load_config(config)
    settings = _merge(values, given, recipe)
    surface = _objective_surface(settings["objective"])
    _check_applicable(settings, given, recipe, surface)
    _check_combinations(settings, given | set(recipe))
    target = _target(settings)
    if _is_baseline(surface):
        _compress_baseline(surface, settings, target)
        return
    _compress_distilled(settings, given, recipe, surface, target)


def _check_combinations(settings: dict[str, Any], chosen: set[str]) -> None:
    """Options that only mean something together, or one of a few values."""
    if settings["budget_bytes"] is not None and "ipc" in chosen:
        raise HabaError("give the budget as --ipc or as --budget-bytes, not both")
    if settings["quantize"] is None and "quantize_granularity" in chosen:
        raise HabaError("--quantize-granularity applies with --quantize only")
    if settings["frequency"] is None and "frequency_mask" in chosen:
        raise HabaError("--frequency-mask applies with --frequency only")
    if settings["frequency_mask"] not in ("shared", "per-class"):
        raise HabaError(
            f"--frequency-mask must be shared or per-class, got {settings['frequency_mask']!r}"
        )


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
    kind = _option_type(name)
    flag = "--" + name.replace("_", "-")
    if kind is Path and isinstance(value, str):
        return Path(value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise HabaError(f"--config: {name} must be an integer ({flag}), got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise HabaError(f"--config: {name} must be true or false ({flag}), got {value!r}")
    if kind is str and not isinstance(value, str):
        raise HabaError(f"--config: {name} must be a string ({flag}), got {value!r}")
    return value


def _option_type(name: str) -> Any:
    """The type an option's value has, from the command's signature (``int | None``: int)."""
    kind = typing.get_type_hints(compress).get(name)
    choices = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    return choices[0] if len(choices) == 1 else kind


def _objective_surface(name: str) -> Any:
    """The chosen objective's class, or the baseline of that name, from the registries."""
    from habactl.distill.baselines import BASELINES
    from habactl.distill.objectives import OBJECTIVES

    known: dict[str, Any] = {**OBJECTIVES, **BASELINES}
    if name not in known:
        raise HabaError(f"unknown objective {name!r} (known: {', '.join(known)})")
    return known[name]


def _is_baseline(surface: Any) -> bool:
    from habactl.distill.baselines import Baseline

    return isinstance(surface, Baseline)


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
    if _is_baseline(surface):
        if settings["codec"] not in (None, *surface.codecs):
            raise HabaError(
                f"--objective {chosen} keeps real images as they are: only "
                f"{', '.join('--codec ' + c for c in surface.codecs)} applies"
            )
        for name in sorted(chosen_set - set(ALWAYS) - set(surface.options)):
            raise HabaError(
                f"{_flag(name)} does not apply to --objective {chosen} (it keeps real "
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
    """How a user names a setting: its flag, or its recipe key when it has none."""
    return "--" + name.replace("_", "-") if name in _options() else name


def _options() -> set[str]:
    """The parameters of compress that are options (not DATA, not recipe-only keys)."""
    hints = typing.get_type_hints(compress, include_extras=True)
    return {
        name
        for name, hint in hints.items()
        if any(isinstance(m, typer.models.OptionInfo) for m in getattr(hint, "__metadata__", ()))
    }


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


def _compress_baseline(baseline: Any, settings: dict[str, Any], target: Path) -> None:
    from habactl.distill.engine import check_archive_target
    from habactl.runtime import distributed

    # Nothing to split under torchrun: rank 0 picks and writes the archive of one process
    # while the others wait (checking the target too could see rank 0's new file).
    if not distributed.is_main():
        distributed.barrier()
        return
    check_archive_target(target, force=settings["force"])
    started = time.perf_counter()
    source = _load(settings)
    path = baseline.make(
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
    from habactl.runtime import distributed

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
    options = {RENAMED.get(name, name): name for name in s}
    engine: dict[str, Any] = {}
    for field_name in (f.name for f in fields(DistillConfig) if f.name not in COMPOSED):
        name = options.get(field_name, field_name)
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
        objective_settings=objective_settings,
        pipeline=_pipeline(s, given, recipe),
        codec=s["codec"] or DEFAULT_CODEC,
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
        f"{key.replace('_', ' ')} {getattr(objective.settings, key)}"
        for key in type(objective).options().values()
        if key != "experts" and getattr(objective.settings, key) is not None
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
        account = storage_account(archive.manifest)
    bases, hallucinators = account.parts["bases"], account.parts["hallucinators"]
    split = (
        f"bases {bases.values:,} + hallucinators {hallucinators.values:,}; "
        if hallucinators.values
        else ""
    )
    stderr.print(
        f"[bold green]wrote[/] {path}  "
        f"({account.stored_values:,} stored values = {split}"
        f"{account.counted_bytes:,} bytes, {account.ratio_bytes:.2f}× the budget "
        f"of {account.budget_bytes:,} bytes; file {path.stat().st_size:,} bytes; "
        f"{seconds:.1f} s)"
    )
    if account.counts == "bases":
        stderr.print(
            f"note: {account.note}; claimed {account.claim_ratio:.2f}×, true {account.ratio:.2f}×"
        )
    stderr.print(
        f"next: habactl inspect {path}  ·  habactl preview {path} -o {path.with_suffix('.png')}"
        f"  ·  habactl evaluate {path} --fast"
    )
