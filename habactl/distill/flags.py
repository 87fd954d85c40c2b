"""The flags of ``habactl compress``, generated from where each setting is declared.

One ``Flag`` per setting the command line offers: the run's and the engine's fields
(``habactl.distill.config``), each decode stage's ``options``, each objective's
``Settings`` (a flag several objectives declare is one flag) and the contrastive term's
fields. A flag's type, default, help and checks come from the declaration; where the
default is not one value (it depends on the objective, or None means something) the help
says it, generated from the declarations too. The registries are arguments, so this
module stays torch-free; the command passes the real ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from habactl.distill.config import (
    BUDGET,
    DISTILL,
    ContrastiveSettings,
    DistillConfig,
    RunSettings,
)
from habactl.distill.setting import Declared, declared, flag_key


@dataclass(frozen=True)
class Flag:
    """One command-line setting and where its value goes."""

    key: str  # the parameter's and the config file's name: lr_bases
    names: tuple[str, ...]  # ("--lr-bases",), ("-o", "--output"); ("DATA",): an argument
    kind: Any  # int, float, str, bool or Path
    optional: bool
    default: Any  # the one default a flag shows; None: the help says it (or there is none)
    help: str
    where: str  # "run", "engine", "stage", "objective" or "contrastive"
    field: str  # the field it sets (for "stage": the stage's option key)
    panel: str | None = None
    min: int | None = None
    owners: tuple[str, ...] = ()  # "objective": the objectives that read it
    stage: tuple[str, str] | None = None  # the stage option it is: (stage, key)
    always: bool = False  # applies whatever the objective, baselines included

    @property
    def argument(self) -> bool:
        return not self.names[0].startswith("-")

    @property
    def name(self) -> str:
        """How a message names it: ``--lr-bases``."""
        return self.names[-1].split("/")[0]


def compress_flags(
    objectives: Mapping[str, Any], stages: Mapping[str, Any], baselines: Mapping[str, Any]
) -> list[Flag]:
    """Every flag of ``habactl compress``, in the order the help lists them."""
    run = [_plain(d, "run") for d in declared(RunSettings)]
    engine = _engine_flags(objectives, stages, baselines)
    bound = {d.stage for d in declared(DistillConfig) if d.stage}
    loose = [
        _stage_flag(name, option)
        for name, cls in stages.items()
        for option in cls.options
        if option.flag and (name, option.key) not in bound
    ]
    contrast = [
        _plain(d, "contrastive") for d in declared(ContrastiveSettings) if d.flag is not None
    ]
    flags = [*run, *engine, *loose, *_objective_flags(objectives), *contrast]
    # Those that always apply first, the run's others last; stable: the rest keep their order.
    return sorted(flags, key=lambda flag: (not flag.always, flag.where == "run"))


def _plain(d: Declared, where: str, **changes: Any) -> Flag:
    assert d.flag is not None
    help, default = d.help, d.default
    if default is None and d.unset:
        help = f"{help} \\[default: {d.unset}]"
    fields_ = {
        "key": d.key,
        "names": d.flag,
        "kind": d.kind,
        "optional": d.optional,
        "default": default,
        "help": help,
        "where": where,
        "field": d.name,
        "panel": d.panel,
        "min": d.min,
        "always": d.always,
    }
    return Flag(**{**fields_, **changes})


def _engine_flags(
    objectives: Mapping[str, Any], stages: Mapping[str, Any], baselines: Mapping[str, Any]
) -> list[Flag]:
    """The engine's flags; a stage-bound field takes its stage option's flag."""
    options = {(name, o.key): o for name, cls in stages.items() for o in cls.options}
    out = []
    for d in declared(DistillConfig):
        if d.stage is not None and d.stage in options and options[d.stage].flag:
            option = options[d.stage]
            out.append(_stage_flag(d.stage[0], option, where="engine", field=d.name))
        elif d.flag is not None:
            by = {
                name: cls.engine_defaults.get(d.name, d.default) for name, cls in objectives.items()
            }
            if d.name == "codec":  # a baseline stores its first codec
                by.update({name: b.codecs[0] for name, b in baselines.items()})
            flag = _plain(d, "engine")
            if d.name == "objective":
                flag = _plain(
                    d, "engine", help=d.help.format(choices=_choices(objectives, baselines))
                )
            if any(value != d.default for value in by.values()):
                text = _varying(d.default, by)
                flag = _plain(d, "engine", default=None, help=f"{d.help} \\[default: {text}]")
            out.append(flag)
    return out


def _stage_flag(stage: str, option: Any, where: str = "stage", field: str = "") -> Flag:
    kind = bool if isinstance(option.default, bool) else type(option.default)
    return Flag(
        key=flag_key((option.flag,)),
        names=(option.flag,),
        kind=kind,
        optional=False,
        default=option.default,
        help=option.help,
        where=where,
        field=field or option.key,
        panel=BUDGET,
        min=option.min,
        stage=(stage, option.key),
    )


def _objective_flags(objectives: Mapping[str, Any]) -> list[Flag]:
    """One flag per flag name any objective declares; the help and checks of its first
    declaration, the default of each objective that reads it."""
    found: dict[str, list[tuple[str, Declared]]] = {}
    for name, cls in objectives.items():
        for d in declared(cls.Settings):
            if d.flag is not None:
                found.setdefault(d.key, []).append((name, d))
    out = []
    for declarations in found.values():
        owners = tuple(name for name, _ in declarations)
        first = declarations[0][1]
        help = next((d.help for _, d in declarations if d.help), "")
        if set(owners) != set(objectives):
            help = f"{', '.join(owners)}: {_lower_first(help)}"
        defaults = {name: d.default for name, d in declarations}
        default = first.default if len(set(map(repr, defaults.values()))) == 1 else None
        if default is None and first.unset:
            help = f"{help} \\[default: {first.unset}]"
        elif default is None and any(v is not None for v in defaults.values()):
            help = f"{help} \\[default: {_varying(None, defaults)}]"
        min_ = next((d.min for _, d in declarations if d.min is not None), None)
        out.append(
            Flag(
                key=first.key,
                names=first.flag or (),
                kind=first.kind,
                optional=first.optional,
                default=default,
                help=help,
                where="objective",
                field=first.name,
                panel=first.panel or DISTILL,
                min=min_,
                owners=owners,
            )
        )
    return out


def _varying(common: Any, by: Mapping[str, Any]) -> str:
    """``1.0; dc, dsa 0.1; mtt 100.0``: the common default, then each other value with
    the objectives that have it (``common`` None: every value is named)."""
    groups: dict[str, list[str]] = {}
    for name, value in by.items():
        if common is None or value != common:
            groups.setdefault(_shown(value), []).append(name)
    parts = [] if common is None else [_shown(common)]
    parts += [f"{', '.join(names)} {value}" for value, names in groups.items()]
    return "; ".join(parts)


def _shown(value: Any) -> str:
    return str(value)


def _choices(objectives: Mapping[str, Any], baselines: Mapping[str, Any]) -> str:
    """``dm (distribution matching), ... or random (...)``, from the registries."""
    items = [
        f"{name} ({_inline(surface.summary)})"
        for name, surface in [*objectives.items(), *baselines.items()]
    ]
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


def _inline(summary: str) -> str:
    """A summary inside parentheses: ``a (b)`` reads ``a; b``."""
    return summary.replace(" (", "; ").replace(")", "")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def config_only_keys() -> set[str]:
    """The config file's keys that no flag sets: the engine's fields without a flag (the
    objective's and the contrastive term's tables, ``pipeline``, ``hallucinator_noise``)."""
    return {d.key for d in declared(DistillConfig) if d.flag is None and d.stage is None}


def by_key(flags: Iterable[Flag]) -> dict[str, Flag]:
    return {flag.key: flag for flag in flags}
