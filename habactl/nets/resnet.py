"""ResNet-18 with instance norm, as in the DD cross-architecture evaluation; with
torchvision's stem for ImageNet-sized images."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from habactl.nets.base import Net, NetSpec, can_pool, conv_norm_relu, make_norm, scaled


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut (1x1 conv + norm when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                make_norm(norm, out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


# Smallest image side (px) that gets torchvision's ImageNet stem: the sizes nearer 256
# than 128 on a log scale, where ConvNet also takes depth 6 (habactl.nets.registry).
TORCHVISION_STEM_FROM = 182


class ResNet18(Net):
    """Stem conv -> 4 stages x 2 BasicBlocks (64/128/256/512) -> global average -> Linear.

    A stage downsamples (stride 2) only while the map stays at least 2x2, because
    instance norm on 1x1 maps discards the input; 32x32 follows the reference exactly.

    The stem is the 3x3 stride-1 conv of the DD codebases for images up to 181 px (the
    smaller side) and torchvision's from TORCHVISION_STEM_FROM on (7x7 stride-2 conv,
    norm, ReLU, 3x3 stride-2 max pool: 224x224 reaches the stages at 56x56 and ends on
    7x7, as torchvision's ResNet-18 does on ImageNet).
    """

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        widths = [scaled(c, spec.width_mult) for c in (64, 128, 256, 512)]
        h, w = spec.height, spec.width
        if min(h, w) >= TORCHVISION_STEM_FROM:
            stem = conv_norm_relu(
                spec.channels, widths[0], spec.norm, kernel_size=7, stride=2, padding=3, bias=False
            )
            stem.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            for _ in range(2):  # each halves the map, rounding up
                h, w = (h + 1) // 2, (w + 1) // 2
        else:
            stem = conv_norm_relu(
                spec.channels, widths[0], spec.norm, kernel_size=3, padding=1, bias=False
            )
        self.stem = nn.Sequential(*stem)
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for i, out_ch in enumerate(widths):
            stride = 2 if i > 0 and can_pool(h, w) else 1
            if stride == 2:
                h, w = (h + 1) // 2, (w + 1) // 2  # a stride-2 3x3 conv with padding 1 rounds up
            blocks += [
                BasicBlock(in_ch, out_ch, stride, spec.norm),
                BasicBlock(out_ch, out_ch, 1, spec.norm),
            ]
            in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_ch
        self.classifier = nn.Linear(in_ch, spec.num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.pool(self.layers(self.stem(x))).flatten(1)
