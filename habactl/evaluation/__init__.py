"""Evaluation: train networks from scratch on an archive and test them on real data.

The names below load on first use: ``habactl.evaluation.protocol`` (the standard protocol,
which archives record) stays importable without torch, and a module that needs only the
protocol (``habactl.distill.archive``) does not pull in the training code, which itself builds
archives.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FAST": "protocol",
    "KD": "protocol",
    "KD_FAST": "protocol",
    "PRESETS": "protocol",
    "STANDARD": "protocol",
    "Protocol": "protocol",
    "full_data_epochs": "protocol",
    "BASELINES": "run",
    "EvaluationReport": "report",
    "evaluate_archive": "run",
    "evaluate_training_set": "run",
    "prepare_test_images": "run",
    "accuracy": "score",
    "summarize": "score",
    "train_net": "train",
}

__all__ = [
    "BASELINES",
    "EvaluationReport",
    "FAST",
    "KD",
    "KD_FAST",
    "PRESETS",
    "Protocol",
    "STANDARD",
    "accuracy",
    "evaluate_archive",
    "evaluate_training_set",
    "full_data_epochs",
    "prepare_test_images",
    "summarize",
    "train_net",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"habactl.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'habactl.evaluation' has no attribute {name!r}")
