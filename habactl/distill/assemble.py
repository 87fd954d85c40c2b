"""One compress run's settings, filled in one order and checked once.

The order: the declared defaults (``habactl.distill.config``, an objective's
``Settings``, a stage's ``options``), then the chosen objective's ``engine_defaults``,
then a config file (``--config``), then the flags given. A config file's values are
checked against the declared types (one error line naming the key); a setting given
for an objective that does not read it, or for a baseline that optimises nothing, is
an error that says so. The result is a frozen ``CompressSettings``. Torch-free: the
registries (objectives, baselines, codec presets) are arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from habactl.distill.config import CompressSettings, DistillConfig, RunSettings
from habactl.distill.config_file import TABLES
from habactl.distill.flags import Flag, by_key, config_only_keys
from habactl.distill.setting import declared
from habactl.errors import HabaError

FILE_SUFFIXES = (".npz", ".h5", ".hdf5", ".store")
_KIND_WORDS = {int: "an integer", bool: "true or false", str: "a string", float: "a number"}


@dataclass(frozen=True)
class Registries:
    """What ``--objective`` and ``--codec`` can name: objective classes, baselines
    (``habactl.distill.baselines``) and codec presets (stage names by preset)."""

    objectives: Mapping[str, Any]
    baselines: Mapping[str, Any]
    presets: Mapping[str, Sequence[str]]

    def surface(self, name: str) -> Any:
        known = {**self.objectives, **self.baselines}
        if name not in known:
            raise HabaError(f"unknown objective {name!r} (known: {', '.join(known)})")
        return known[name]


def assemble(
    flags: Sequence[Flag],
    given: Mapping[str, Any],
    file: Mapping[str, Any],
    registries: Registries,
) -> tuple[CompressSettings, Any]:
    """(the run's settings, the chosen objective class or baseline).

    ``given``: the flags given on the command line, by key, as the command line typed
    them; ``file``: a config file's contents (``habactl.distill.config_file``).
    """
    table = by_key(flags)
    plain = _file_values(table, file)
    values = {**plain, **given}
    chosen = set(given) | set(file)
    objective = values.get("objective", DistillConfig.objective)
    surface = registries.surface(objective)
    baseline = hasattr(surface, "codecs")  # habactl.distill.baselines.Baseline
    if baseline:
        _check_baseline(table, values, chosen, surface)
    else:
        _check_objective(table, chosen, file, surface)
    _check_combinations(values, chosen)
    run = RunSettings(**{d.name: values[d.key] for d in declared(RunSettings) if d.key in values})
    engine = _engine(table, values, chosen, surface)
    if baseline:  # it optimises nothing: the engine's settings it takes are all there is
        return CompressSettings(run=run, distill=DistillConfig(**engine)), surface
    engine.update(
        objective_settings=_objective_settings(table, values, file, surface),
        contrastive_settings=_contrastive_settings(table, values, file),
        pipeline=_pipeline(table, given, file),
        stage_options=_stage_options(table, given, file, values, registries),
    )
    return CompressSettings(run=run, distill=DistillConfig(**engine)), surface


def _file_values(table: Mapping[str, Flag], file: Mapping[str, Any]) -> dict[str, Any]:
    """The config file's plain keys, in the types the settings declare."""
    known = (set(table) | config_only_keys()) - {"config"}
    unknown = sorted(set(file) - known)
    if unknown:
        raise HabaError(
            f"--config: unknown setting {unknown[0]!r} (settings are the compress options' "
            "names with _ for -, e.g. lr_bases)"
        )
    types = {d.key: (d.kind, d.name) for d in declared(DistillConfig)}
    out = {}
    for key, value in file.items():
        if key in (*TABLES, "pipeline"):
            continue
        flag = table.get(key)
        kind = flag.kind if flag is not None else types[key][0]
        out[key] = _coerce(key, value, kind, flag.name if flag else None)
    return out


def _coerce(key: str, value: Any, kind: Any, flag: str | None) -> Any:
    """A config value in its declared type (TOML has no paths; 1 may mean 1.0)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is Path and isinstance(value, str):
        return Path(value)
    if kind is float and number:
        return float(value)
    fits = {int: number and isinstance(value, int), bool: isinstance(value, bool)}
    if kind in _KIND_WORDS and not fits.get(kind, isinstance(value, kind)):
        named = f" ({flag})" if flag else ""
        raise HabaError(f"--config: {key} must be {_KIND_WORDS[kind]}{named}, got {value!r}")
    return value


def _named(table: Mapping[str, Flag], key: str) -> str:
    """How a message names a setting: its flag, or its config key when it has none."""
    return table[key].name if key in table else key


def _check_baseline(
    table: Mapping[str, Flag], values: Mapping[str, Any], chosen: set[str], surface: Any
) -> None:
    codec = values.get("codec")
    if codec not in (None, *surface.codecs):
        raise HabaError(
            f"--objective {surface.name} keeps real images as they are: only "
            f"{', '.join('--codec ' + c for c in surface.codecs)} applies"
        )
    always = {key for key, flag in table.items() if flag.always}
    for key in sorted(chosen - always - set(surface.options)):
        raise HabaError(
            f"{_named(table, key)} does not apply to --objective {surface.name} (it keeps "
            "real images as they are; nothing is optimised)"
        )


def _check_objective(
    table: Mapping[str, Flag], chosen: set[str], file: Mapping[str, Any], surface: Any
) -> None:
    for key in sorted(chosen):
        flag = table.get(key)
        if flag is not None and flag.where == "objective" and surface.name not in flag.owners:
            raise HabaError(f"{flag.name} applies to --objective {', '.join(flag.owners)} only")
    unknown = sorted(set(file.get("settings", {})) - set(surface.defaults))
    if unknown:
        raise HabaError(
            f"--config: objective {surface.name} has no setting {unknown[0]!r} "
            f"(its settings: {', '.join(surface.defaults)})"
        )


def _check_combinations(values: Mapping[str, Any], chosen: set[str]) -> None:
    """Settings that only mean something together, or one of a few values."""
    if values.get("budget_bytes") is not None and "ipc" in chosen:
        raise HabaError("give the budget as --ipc or as --budget-bytes, not both")
    if values.get("quantize") is None and "quantize_granularity" in chosen:
        raise HabaError("--quantize-granularity applies with --quantize only")
    if values.get("frequency") is None and "frequency_mask" in chosen:
        raise HabaError("--frequency-mask applies with --frequency only")
    mask = values.get("frequency_mask", DistillConfig.frequency_mask)
    if mask not in ("shared", "per-class"):
        raise HabaError(f"--frequency-mask must be shared or per-class, got {mask!r}")


def _engine(
    table: Mapping[str, Flag], values: Mapping[str, Any], chosen: set[str], surface: Any
) -> dict[str, Any]:
    """The engine's plain fields: set ones, else the objective's engine defaults (the
    declared defaults for the rest)."""
    fields = {flag.key: flag.field for flag in table.values() if flag.where == "engine"}
    fields.update({key: key for key in config_only_keys() - {*TABLES, "pipeline"}})
    engine = dict(getattr(surface, "engine_defaults", {}))
    for key, name in fields.items():
        if key in chosen and values.get(key) is not None:
            engine[name] = values[key]
    return engine


def _objective_settings(
    table: Mapping[str, Flag], values: Mapping[str, Any], file: Mapping[str, Any], surface: Any
) -> dict[str, Any]:
    """The config's [settings], then its plain keys and the flags of the objective's own."""
    settings = dict(file.get("settings", {}))
    fields = {d.key: d.name for d in declared(surface.Settings)}
    for key, value in values.items():
        flag = table.get(key)
        if flag is not None and flag.where == "objective" and value is not None:
            settings[fields[key]] = str(value) if isinstance(value, Path) else value
    return settings


def _contrastive_settings(
    table: Mapping[str, Flag], values: Mapping[str, Any], file: Mapping[str, Any]
) -> dict[str, Any]:
    """The config's [contrastive_settings], then its plain keys and the flags."""
    settings = dict(file.get("contrastive_settings", {}))
    for key, value in values.items():
        flag = table.get(key)
        if flag is not None and flag.where == "contrastive":
            settings[flag.field] = value
    return settings


def _pipeline(
    table: Mapping[str, Flag], given: Mapping[str, Any], file: Mapping[str, Any]
) -> tuple[Mapping[str, Any], ...] | None:
    """The config's pipeline with each stage flag given applied; None (the codec preset)
    when the config has none or --codec was given."""
    if "pipeline" not in file or "codec" in given:
        return None
    entries = [
        dict(entry, configuration=dict(entry.get("configuration", {})))
        for entry in file["pipeline"]
    ]
    for key, value in given.items():
        flag = table.get(key)
        if flag is None or flag.stage is None:
            continue
        stage, option = flag.stage
        matching = [e for e in entries if e.get("name") == stage]
        if not matching:
            raise HabaError(
                f"{flag.name} does not apply: the config file's pipeline has no {stage} stage"
            )
        for entry in matching:
            entry["configuration"][option] = value
    return tuple(entries)


def _stage_options(
    table: Mapping[str, Flag],
    given: Mapping[str, Any],
    file: Mapping[str, Any],
    values: Mapping[str, Any],
    registries: Registries,
) -> dict[str, dict[str, Any]]:
    """Options of the codec preset's stages that no engine field holds: the config's
    [stage_options], then the flags given (with a config's pipeline they edit it)."""
    options: dict[str, dict[str, Any]] = {
        name: dict(entries) for name, entries in file.get("stage_options", {}).items()
    }
    if "pipeline" in file and "codec" not in given:
        return options
    codec = values.get("codec") or DistillConfig.codec
    for key, value in given.items():
        flag = table[key]
        if flag.where != "stage" or flag.stage is None:
            continue
        stage, option = flag.stage
        if stage not in registries.presets.get(codec, ()):
            raise HabaError(f"{flag.name} does not apply: the codec {codec} has no {stage} stage")
        options.setdefault(stage, {})[option] = value
    return options


def archive_path(run: RunSettings) -> Path:
    """The archive's path: -o, or <data>.haba in the current folder (never inside DATA)."""
    if run.output is not None:
        output = Path(run.output)
        if output.suffix.lower() != ".haba" and not output.is_dir():
            raise HabaError(
                f"-o {output}: an archive's name ends in .haba (e.g. -o "
                f"{output.with_suffix('.haba').name})"
            )
        return output
    data = Path(str(run.data))
    name = data.name if data.name not in ("", ".", "..") else data.resolve().name
    if data.suffix.lower() in FILE_SUFFIXES:
        name = data.stem
    return Path(f"{name or 'data'}.haba")
