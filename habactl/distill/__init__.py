"""Distillation: learn the stored tensors of a .haba archive from a real data set."""

from habactl.distill.engine import DistillConfig, Distiller, DistillResult, distill
from habactl.distill.errors import DistillError, Interrupted, NonFiniteLoss
from habactl.distill.objectives import OBJECTIVES, Objective, get_objective
from habactl.distill.planner import CODECS, Plan, plan_budget

__all__ = ["CODECS", "OBJECTIVES", "DistillConfig", "DistillError", "DistillResult",
           "Distiller", "Interrupted", "NonFiniteLoss", "Objective", "Plan", "distill",
           "get_objective", "plan_budget"]
