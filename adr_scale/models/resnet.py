"""CIFAR-style ResNet-18 and pre-activation ResNet-18.

3x3 stem and no max-pool (He et al. 2016, Sec. 4.2, the CIFAR variant used by Madry et al. 2018 and
Rice et al. 2020); adaptive average pooling at the end so 32x32 and 64x64 inputs both work.
"""

from __future__ import annotations

from torch import Tensor, nn

from adr_scale.models.layers import conv1x1, conv3x3, init_weights
from adr_scale.models.registry import ActFactory, register_model

WIDTHS = (64, 128, 256, 512)  # channels per stage
STRIDES = (1, 2, 2, 2)  # 32x32 -> 4x4 before pooling


class BasicBlock(nn.Module):
    """conv-BN-act-conv-BN plus shortcut, then act (He et al. 2016, Fig. 2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: ActFactory) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = act()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = act()
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:  # projection shortcut, option B of He et al. 2016
            self.shortcut = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:  # (B, in_ch, H, W) -> (B, out_ch, H/s, W/s)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-act-conv-BN-act-conv plus shortcut (He et al. 2016b, "Identity Mappings", Fig. 4e).

    The projection shortcut is a bare 1x1 conv on the pre-activated input, as in the PreActResNet-18
    of Wong et al. 2020 and Rice et al. 2020 that adversarial-training papers report on.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: ActFactory) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.act1 = act()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = act()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = conv1x1(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:  # (B, in_ch, H, W) -> (B, out_ch, H/s, W/s)
        out = self.act1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + skip


def _stages(block: type[nn.Module], blocks: tuple[int, ...], act: ActFactory) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = WIDTHS[0]
    for width, stride, n in zip(WIDTHS, STRIDES, blocks, strict=True):
        for i in range(n):
            layers.append(block(in_ch, width, stride if i == 0 else 1, act))
            in_ch = width
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """Post-activation ResNet: stem conv-BN-act, four stages, global pool, linear."""

    def __init__(
        self, blocks: tuple[int, ...], num_classes: int, act: ActFactory, in_channels: int
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(in_channels, WIDTHS[0]), nn.BatchNorm2d(WIDTHS[0]), act())
        self.layers = _stages(BasicBlock, blocks, act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W), already normalised
        out = self.layers(self.stem(x))  # (B, 512, H/8, W/8)
        return self.fc(self.pool(out).flatten(1))  # (B, num_classes)


class PreActResNet(nn.Module):
    """Pre-activation ResNet: bare stem conv, four stages, final BN-act, global pool, linear.

    The final BN-act is needed because pre-activation blocks output an un-normalised sum (He et al.
    2016b add an extra activation after the last unit; so do the Wong et al. 2020, Rice et al. 2020
    and Gowal et al. 2020 code bases). Without it the network has 1,024 fewer parameters
    (11,171,146 for 10 classes, the pytorch-cifar variant).
    """

    def __init__(
        self, blocks: tuple[int, ...], num_classes: int, act: ActFactory, in_channels: int
    ) -> None:
        super().__init__()
        self.stem = conv3x3(in_channels, WIDTHS[0])
        self.layers = _stages(PreActBlock, blocks, act)
        self.bn = nn.BatchNorm2d(WIDTHS[-1])
        self.act = act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W), already normalised
        out = self.act(self.bn(self.layers(self.stem(x))))  # (B, 512, H/8, W/8)
        return self.fc(self.pool(out).flatten(1))  # (B, num_classes)


@register_model("resnet18")
def resnet18(num_classes: int, act: ActFactory, in_channels: int) -> nn.Module:
    return ResNet((2, 2, 2, 2), num_classes, act, in_channels)


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int, act: ActFactory, in_channels: int) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, act, in_channels)
