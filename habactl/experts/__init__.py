"""Expert trajectories for trajectory matching: training them and the buffer format."""

from habactl.experts.buffer import ExpertBuffer, ExpertsError
from habactl.experts.flat import FlatNet
from habactl.experts.train import ExpertSettings, train_experts

__all__ = ["ExpertBuffer", "ExpertSettings", "ExpertsError", "FlatNet", "train_experts"]
