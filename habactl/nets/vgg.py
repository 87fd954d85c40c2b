"""VGG-11 with instance norm, as in the DD cross-architecture evaluation."""

from __future__ import annotations

from torch import Tensor, nn

from habactl.nets.base import Net, NetSpec, can_pool, conv_norm_relu, scaled

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(Net):
    """Conv 3x3 -> norm -> ReLU blocks with max-pools ("M"), global average, Linear.

    28x28 inputs are padded to 32x32 by the first conv (reference). Pools that would
    leave a later norm a 1x1 map are skipped (8x8 keeps 2x2 through the deep blocks);
    the final global average makes the head 512 wide for any input size.
    """

    def __init__(self, spec: NetSpec, *, cfg: tuple = VGG11) -> None:
        super().__init__()
        pad_first = 3 if (spec.height, spec.width) == (28, 28) else 1
        h, w = spec.height + 2 * (pad_first - 1), spec.width + 2 * (pad_first - 1)
        last_pool = max(i for i, item in enumerate(cfg) if item == "M")
        layers: list[nn.Module] = []
        in_ch = spec.channels
        for i, item in enumerate(cfg):
            if item == "M":
                if can_pool(h, w, last=i == last_pool):
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    h, w = h // 2, w // 2
                continue
            out_ch = scaled(item, spec.width_mult)
            pad = pad_first if i == 0 else 1
            layers += conv_norm_relu(in_ch, out_ch, spec.norm, kernel_size=3, padding=pad)
            in_ch = out_ch
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.feature_dim = in_ch
        self.classifier = nn.Linear(in_ch, spec.num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)
