"""ConvNet, the standard network of dataset distillation: depth 3 at 32 px, deeper for
larger images (docs/method.md, "Networks by resolution")."""

from __future__ import annotations

from torch import Tensor, nn

from habactl.nets.base import Net, NetSpec, can_pool, conv_norm_relu, scaled
from habactl.nets.pool import Pool2x2


class ConvNet(Net):
    """depth x [Conv 3x3 -> norm -> ReLU -> AvgPool 2] -> Linear; 128 channels times
    the width multiplier.

    28x28 inputs get padding 3 on the first conv (-> 32x32) as in the reference, so
    MNIST-sized data has the same 2048 features as CIFAR. Smaller inputs skip the pools
    that would leave a later norm a 1x1 map (8x8: 8 -> 4 -> 2 -> 1, 128 features). Each
    further block halves the map once more: depth 4 at 64x64, 5 at 128x128 and 6 at
    256x256 all end on 4x4 maps (2048 features); 224x224 at depth 6 ends on 3x3.
    """

    def __init__(self, spec: NetSpec, *, depth: int = 3) -> None:
        super().__init__()
        net_width = scaled(128, spec.width_mult)
        pad_first = 3 if (spec.height, spec.width) == (28, 28) else 1
        h, w = spec.height + 2 * (pad_first - 1), spec.width + 2 * (pad_first - 1)
        layers: list[nn.Module] = []
        in_ch = spec.channels
        for d in range(depth):
            pad = pad_first if d == 0 else 1
            layers += conv_norm_relu(in_ch, net_width, spec.norm, kernel_size=3, padding=pad)
            if can_pool(h, w, last=d == depth - 1):
                layers.append(Pool2x2())
                h, w = h // 2, w // 2
            in_ch = net_width
        self.features = nn.Sequential(*layers)
        self.feature_dim = net_width * h * w
        self.classifier = nn.Linear(self.feature_dim, spec.num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)
