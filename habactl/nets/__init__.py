"""Networks: ConvNet-3 and the cross-architecture evaluators, built by name."""

from habactl.nets.base import Net
from habactl.nets.convnet import ConvNet
from habactl.nets.registry import ARCHITECTURES, build_net

__all__ = ["ARCHITECTURES", "ConvNet", "Net", "build_net"]
