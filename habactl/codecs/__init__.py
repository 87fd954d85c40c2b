"""Decode stages: stored bases -> training images, built from names and configurations.

The names below load on first use: `habactl.codecs.spec` (the pure description the
format reader needs) must stay importable without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Stage": "base",
    "StageSpec": "spec",
    "Pipeline": "pipeline",
    "PipelineSpec": "spec",
    "CodecError": "errors",
    "STAGES": "registry",
    "get_stage": "registry",
    "describe_pipeline": "spec",
}

__all__ = [
    "Stage",
    "StageSpec",
    "Pipeline",
    "PipelineSpec",
    "CodecError",
    "STAGES",
    "get_stage",
    "describe_pipeline",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"habactl.codecs.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'habactl.codecs' has no attribute {name!r}")
