"""`habactl compress`: make a .haba archive from a data set.

A thin shell over the library. The command's flags are generated from where each
setting is declared (``habactl.distill.flags``): the engine's and the run's fields
(``habactl.distill.config``), each objective's ``Settings``, each stage's ``options``,
so a new objective or stage brings its flags with it. The settings are filled in one
order, defaults < config file < flags given (``habactl.distill.assemble``); every output
location is checked before any data is loaded.

The command is built when it runs (``app.LAZY_COMMANDS``): the registries it reads
import torch, which ``habactl --help`` must not.
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from habactl.cli.app import LAZY_COMMANDS, HabaTyper, guarded, plural, stderr
from habactl.distill.assemble import Registries, archive_path, assemble
from habactl.distill.config import CompressSettings, RunSettings
from habactl.distill.flags import Flag, compress_flags
from habactl.runtime import distributed
from habactl.runtime.distributed import Collective


def command() -> Any:
    """The compress command, its flags generated from the registries as they are now."""
    objectives, baselines, _ = _registries()
    flags = compress_flags(objectives, _stages(), baselines)
    shell = HabaTyper(add_completion=False, pretty_exceptions_enable=False)
    shell.command("compress", help=LAZY_COMMANDS["compress"][1])(_callback(flags))
    return typer.main.get_command(shell)


def _registries() -> tuple[Any, Any, Any]:
    from habactl.codecs.registry import PRESETS
    from habactl.distill.baselines import BASELINES
    from habactl.distill.objectives import OBJECTIVES

    return OBJECTIVES, BASELINES, PRESETS


def _stages() -> Any:
    from habactl.codecs.registry import STAGES

    return STAGES


def _callback(flags: list[Flag]) -> Any:
    """A function whose signature is the flags (typer reads commands from signatures)."""

    @guarded
    def compress(ctx: typer.Context, **values: Any) -> None:
        given = {key: value for key, value in values.items() if _given(ctx, key)}
        run(flags, given)

    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    parameters = [context, *(_parameter(flag) for flag in flags)]
    compress.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return compress


def _parameter(flag: Flag) -> inspect.Parameter:
    kind = flag.kind if flag.default is not None else flag.kind | None
    if flag.argument:
        info: Any = typer.Argument(help=flag.help)
    else:
        info = typer.Option(*flag.names, help=flag.help, rich_help_panel=flag.panel, min=flag.min)
    return inspect.Parameter(
        flag.key,
        inspect.Parameter.KEYWORD_ONLY,
        default=flag.default,
        annotation=Annotated[kind, info],
    )


def _given(ctx: typer.Context, name: str) -> bool:
    """True when the user set the parameter (on the command line), not its default."""
    source = ctx.get_parameter_source(name)  # an enum of click's (typer vendors click)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def run(flags: list[Flag], given: dict[str, Any]) -> None:
    """Assemble the settings, check every output, then compress."""
    file: dict[str, Any] = {}
    if given.get("config") is not None:
        from habactl.distill.config_file import load_config

        file = load_config(given["config"])
    objectives, baselines, presets = _registries()
    settings, surface = assemble(flags, given, file, Registries(objectives, baselines, presets))
    target = archive_path(settings.run)
    if surface.name in baselines:
        _compress_baseline(surface, settings, target, distributed.current())
    else:
        _compress_distilled(settings, target, distributed.current())


def _load(run: RunSettings) -> Any:
    """The data: a store (read lazily), or a source loaded into memory."""
    from habactl.data.opening import open_data

    keys = {"images_key": run.images_key, "labels_key": run.labels_key}
    options = {key: value for key, value in keys.items() if value is not None}
    root = str(run.root) if run.root else None
    return open_data(run.data, root=root, download=run.download, **options)


def _compress_baseline(
    baseline: Any, settings: CompressSettings, target: Path, job: Collective
) -> None:
    from habactl.distill.engine import check_archive_target

    run, config = settings.run, settings.distill
    # Nothing to split under torchrun: rank 0 picks and writes the archive of one process
    # while the others wait (checking the target too could see rank 0's new file).
    if not job.is_main:
        job.barrier()
        return
    check_archive_target(target, force=run.force)
    started = time.perf_counter()
    source = _load(run)
    path = baseline.make(source, target, ipc=config.ipc, seed=config.seed, overwrite=run.force)
    job.barrier()
    if not run.quiet:
        report_written(path, time.perf_counter() - started)


def _compress_distilled(settings: CompressSettings, target: Path, job: Collective) -> None:
    import torch

    from habactl.distill import Distiller, Interrupted
    from habactl.distill.engine import check_outputs
    from habactl.distill.progress import RichReporter

    run = settings.run
    metrics = run.log_file
    if metrics is None and run.log:
        metrics = target.with_name(target.name + ".jsonl")
    checkpoint = check_outputs(
        target, checkpoint=run.checkpoint, log=metrics, force=run.force, resume=run.resume
    )
    if run.resume and not checkpoint.is_file() and not run.quiet:
        print(
            f"habactl: no checkpoint at {checkpoint} yet: starting from iteration 0",
            file=sys.stderr,
        )
    started = time.perf_counter()
    if run.threads:
        torch.set_num_threads(run.threads)
    source = _load(run)
    distiller = Distiller(source, settings.distill, job)
    try:
        reporter = None if run.quiet else RichReporter(stderr, _header(source.name, distiller))
        result = distiller.run(
            target,
            force=run.force,
            resume=run.resume,
            checkpoint_path=run.checkpoint,
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
    if not run.quiet and job.is_main:  # under torchrun rank 0 wrote the archive
        if result.resumed_from:
            stderr.print(f"resumed at iteration {result.resumed_from}")
        if metrics is not None:
            stderr.print(f"metrics: {metrics}")
        report_written(result.path, time.perf_counter() - started)


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
