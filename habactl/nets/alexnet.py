"""AlexNet as used in dataset distillation: five convs, three max-pools, one Linear."""

from __future__ import annotations

from torch import Tensor, nn

from habactl.nets.base import Net, can_pool, make_norm, scaled


class AlexNet(Net):
    """The DD-literature AlexNet with a norm after every conv.

    28x28 inputs are padded to 32x32 by the first conv, as in the reference. Pools that
    would leave a later norm a 1x1 map are skipped, and maps above 4x4 are averaged down
    to 4x4 so the head stays small on large images (32x32 input is unchanged: 192·4·4).
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        num_classes: int,
        *,
        width_mult: float = 1.0,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (scaled(c, width_mult) for c in (128, 192, 256, 192, 192))
        pad_first = 4 if (height, width) == (28, 28) else 2
        h, w = height + 2 * (pad_first - 2), width + 2 * (pad_first - 2)

        def conv(cin: int, cout: int, k: int, pad: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, kernel_size=k, padding=pad),
                make_norm(norm, cout),
                nn.ReLU(),
            ]

        def pool(last: bool = False) -> list[nn.Module]:
            nonlocal h, w
            if not (can_pool(h, last=last) and can_pool(w, last=last)):
                return []
            h, w = h // 2, w // 2
            return [nn.MaxPool2d(kernel_size=2, stride=2)]

        layers = conv(channels, c1, 5, pad_first) + pool()
        layers += conv(c1, c2, 5, 2) + pool()
        layers += conv(c2, c3, 3, 1) + conv(c3, c4, 3, 1) + conv(c4, c5, 3, 1) + pool(last=True)
        h, w = min(h, 4), min(w, 4)
        layers.append(nn.AdaptiveAvgPool2d((h, w)))
        self.features = nn.Sequential(*layers)
        self.feature_dim = c5 * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)


def build_alexnet(
    channels: int,
    height: int,
    width: int,
    num_classes: int,
    *,
    width_mult: float = 1.0,
    norm: str = "instance",
) -> AlexNet:
    return AlexNet(channels, height, width, num_classes, width_mult=width_mult, norm=norm)
