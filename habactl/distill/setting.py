"""Declared settings: a dataclass field that says how it is offered to a user.

Every setting of ``habactl compress`` is a field of a frozen dataclass (the engine's
``DistillConfig``, the run's ``RunSettings``, an objective's ``Settings``, the
contrastive term's ``ContrastiveSettings``), made with ``setting()``: its default, and in
the field's metadata its flag, its help and the checks a flag makes. The command line and
the config file are generated from these declarations, so a default and a help text are
written once, beside the value the code reads. Standard library only: ``habactl --help``
and ``inspect --config`` read it without torch.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple


def setting(
    default: Any = None,
    flag: str | tuple[str, ...] | None = None,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    key: str | None = None,
    panel: str | None = None,
    min: int | None = None,
    unset: str | None = None,
    path: bool = False,
    stage: tuple[str, str] | None = None,
    always: bool = False,
) -> Any:
    """One declared field.

    ``flag``: the command line's name for it (``"--lr-bases"``; ``("-o", "--output")``;
    ``"--contrastive/--no-contrastive"`` for an on/off pair); None: a config file only.
    ``help``: one or two sentences, without the default (the help shows it, generated).
    ``key``: the config file's key when it is not the flag's name with ``_`` for ``-``
    (or, without a flag, the field's name). ``panel``: the help's group. ``min``: the
    smallest value a flag takes. ``unset``: what None means, shown as the default
    (``"all"``). ``path``: the value names a file or folder. ``stage``: (stage, option):
    the value is that decode stage's option, and the stage declares its flag, help and
    default. ``always``: it applies whatever the objective (also to the baselines).
    """
    metadata = {
        "flag": (flag,) if isinstance(flag, str) else flag,
        "help": help,
        "key": key,
        "panel": panel,
        "min": min,
        "unset": unset,
        "path": path,
        "stage": stage,
        "always": always,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Declared(NamedTuple):
    """A field's declaration, as read back from the dataclass."""

    name: str  # the field
    key: str  # the config file's key (and the command line's parameter name)
    flag: tuple[str, ...] | None
    help: str
    default: Any
    kind: type  # int, float, str, bool or Path: what a flag or a config value holds
    optional: bool  # None is a value (then `unset` says what it means)
    panel: str | None = None
    min: int | None = None
    unset: str | None = None
    stage: tuple[str, str] | None = None
    always: bool = False

    @property
    def argument(self) -> bool:
        """A positional argument (its "flag" is a name like ``DATA``), not an option."""
        return self.flag is not None and not self.flag[0].startswith("-")


def flag_key(flag: tuple[str, ...]) -> str:
    """``("-o", "--output")`` -> ``output``; ``("--contrastive/--no-contrastive",)`` ->
    ``contrastive``: the long name with ``_`` for ``-``."""
    long = [name for name in flag if name.startswith("--")][0]
    return long.split("/")[0][2:].replace("-", "_")


def declared(cls: type) -> list[Declared]:
    """Every field of the dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        flag = meta.get("flag")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kind, optional = value_kind(hints[f.name])
        if meta.get("path"):
            kind = Path
        key = meta.get("key") or (flag_key(flag) if flag and flag[0].startswith("-") else f.name)
        out.append(
            Declared(
                name=f.name,
                key=key,
                flag=flag,
                help=meta.get("help", ""),
                default=default,
                kind=kind,
                optional=optional,
                panel=meta.get("panel"),
                min=meta.get("min"),
                unset=meta.get("unset"),
                stage=meta.get("stage"),
                always=bool(meta.get("always")),
            )
        )
    return out


def value_kind(hint: Any) -> tuple[Any, bool]:
    """(the type a value has, whether None is allowed): ``int | None`` -> (int, True)."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False
