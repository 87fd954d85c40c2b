"""Package attributes that import their module on first use (PEP 562).

A package names what each of its submodules exports::

    __getattr__, __all__ = lazy_exports(__name__, {"writer": ["save_archive"], ...})

``import habactl.format`` then runs no submodule, so reading an archive's header never
imports the writer (and torch), while ``habactl.format.save_archive`` still works.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, modules: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], list[str]]:
    """``package``'s ``__getattr__`` and ``__all__``: ``modules`` maps each submodule to
    the names it defines, and a name's submodule is imported when the name is first read."""
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, list(home)
