"""Distillation: learn the stored tensors of a .haba archive from a real data set.

The names below load on first use (PEP 562), so that torch-free parts of the package
(``habactl.distill.config_file``, used by ``habactl inspect --config``) import no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DistillConfig": "config",
    "Distiller": "engine",
    "DistillResult": "engine",
    "distill": "engine",
    "DistillError": "errors",
    "Interrupted": "errors",
    "NonFiniteLoss": "errors",
    "OBJECTIVES": "objectives",
    "Objective": "objectives",
    "get_objective": "objectives",
    "CODECS": "planner",
    "Plan": "planner",
    "plan_budget": "planner",
    "plan_pipeline": "planner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"habactl.distill.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'habactl.distill' has no attribute {name!r}")
