"""AlexNet as used in dataset distillation: five convs, three max-pools, one Linear."""

from __future__ import annotations

from torch import Tensor, nn

from habactl.nets.base import Net, NetSpec, can_pool, conv_norm_relu, scaled


class AlexNet(Net):
    """The DD-literature AlexNet with a norm after every conv.

    28x28 inputs are padded to 32x32 by the first conv, as in the reference. Pools that
    would leave a later norm a 1x1 map are skipped, and maps above 4x4 are averaged down
    to 4x4 so the head stays small on large images (32x32 input is unchanged: 192·4·4).
    """

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (scaled(c, spec.width_mult) for c in (128, 192, 256, 192, 192))
        pad_first = 4 if (spec.height, spec.width) == (28, 28) else 2
        h, w = spec.height + 2 * (pad_first - 2), spec.width + 2 * (pad_first - 2)

        def conv(cin: int, cout: int, k: int, pad: int) -> list[nn.Module]:
            return conv_norm_relu(cin, cout, spec.norm, kernel_size=k, padding=pad)

        def pool(last: bool = False) -> list[nn.Module]:
            nonlocal h, w
            if not can_pool(h, w, last=last):
                return []
            h, w = h // 2, w // 2
            return [nn.MaxPool2d(kernel_size=2, stride=2)]

        layers = conv(spec.channels, c1, 5, pad_first) + pool()
        layers += conv(c1, c2, 5, 2) + pool()
        layers += conv(c2, c3, 3, 1) + conv(c3, c4, 3, 1) + conv(c4, c5, 3, 1) + pool(last=True)
        h, w = min(h, 4), min(w, 4)
        layers.append(nn.AdaptiveAvgPool2d((h, w)))
        self.features = nn.Sequential(*layers)
        self.feature_dim = c5 * h * w
        self.classifier = nn.Linear(self.feature_dim, spec.num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)
