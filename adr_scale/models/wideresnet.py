"""WideResNet (Zagoruyko & Komodakis 2016) as used for adversarial training (Madry et al. 2018;
Zhang et al. 2019, TRADES): pre-activation blocks, no dropout, no conv biases, final BN-act."""

from __future__ import annotations

from torch import Tensor, nn

from adr_scale.models.layers import conv3x3, init_weights
from adr_scale.models.registry import ActFactory, register_model

# A WRN block is the pre-activation block (BN-act-conv x2; the 1x1 projection sees the
# pre-activated input, as in the TRADES / Madry reference code), only wider.
from adr_scale.models.resnet import PreActBlock

BASE_WIDTHS = (16, 32, 64)  # stage widths before widening (Zagoruyko & Komodakis 2016, Table 1)
STRIDES = (1, 2, 2)  # 32x32 -> 8x8 before pooling


class WideResNet(nn.Module):
    """WRN-depth-widen: stem conv, three stages of (depth - 4) / 6 blocks, BN-act, pool, linear."""

    def __init__(
        self, depth: int, widen: int, num_classes: int, act: ActFactory, in_channels: int
    ) -> None:
        super().__init__()
        assert (depth - 4) % 6 == 0, f"WideResNet depth must be 6n + 4, got {depth}"
        n = (depth - 4) // 6
        widths = [w * widen for w in BASE_WIDTHS]
        self.stem = conv3x3(in_channels, BASE_WIDTHS[0])
        layers: list[nn.Module] = []
        in_ch = BASE_WIDTHS[0]
        for width, stride in zip(widths, STRIDES, strict=True):
            for i in range(n):
                layers.append(PreActBlock(in_ch, width, stride if i == 0 else 1, act))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_ch)
        self.act = act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W), already normalised
        out = self.act(self.bn(self.layers(self.stem(x))))  # (B, 64 * widen, H/4, W/4)
        return self.fc(self.pool(out).flatten(1))  # (B, num_classes)


@register_model("wrn34_10")
def wrn34_10(num_classes: int, act: ActFactory, in_channels: int) -> nn.Module:
    return WideResNet(34, 10, num_classes, act, in_channels)


@register_model("wrn28_10")
def wrn28_10(num_classes: int, act: ActFactory, in_channels: int) -> nn.Module:
    return WideResNet(28, 10, num_classes, act, in_channels)
