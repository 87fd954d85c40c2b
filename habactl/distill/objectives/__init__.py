"""Distillation objectives, by name. Each lives in its own module behind `base.Objective`."""

from __future__ import annotations

from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, Objective
from habactl.distill.objectives.cafe import FeatureAlignment
from habactl.distill.objectives.dc import DifferentiableSiameseGradientMatching, GradientMatching
from habactl.distill.objectives.dcc import ContrastiveGradientMatching
from habactl.distill.objectives.dd import DatasetDistillation
from habactl.distill.objectives.dm import DistributionMatching
from habactl.distill.objectives.kip import KernelInducingPoints
from habactl.distill.objectives.mtt import TrajectoryMatching
from habactl.distill.objectives.rded import Selection
from habactl.distill.objectives.sre2l import Recovery

OBJECTIVES: dict[str, type[Objective]] = {
    DistributionMatching.name: DistributionMatching,
    GradientMatching.name: GradientMatching,
    DifferentiableSiameseGradientMatching.name: DifferentiableSiameseGradientMatching,
    TrajectoryMatching.name: TrajectoryMatching,
    DatasetDistillation.name: DatasetDistillation,
    KernelInducingPoints.name: KernelInducingPoints,
    ContrastiveGradientMatching.name: ContrastiveGradientMatching,
    FeatureAlignment.name: FeatureAlignment,
    Recovery.name: Recovery,
    Selection.name: Selection,
}


def get_objective(name: str) -> type[Objective]:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise DistillError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})") from None


__all__ = ["OBJECTIVES", "Context", "Objective", "get_objective"]
