"""Soft labels: their storage forms and recomputing them with a teacher (`habactl relabel`).

The names below load on first use, so that importing the package imports neither torch
nor a teacher.
"""

from __future__ import annotations

from habactl.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "forms": ["EncodedLabels", "LabelsError", "encode_soft_labels", "labelled_manifest"],
        "relabeling": ["LabelBudget", "RelabelResult", "label_budget", "relabel"],
    },
)
