"""Tiny networks for tests and the smoke preset; they run on 1x8x8 digits and 3x32x32 images alike."""

from __future__ import annotations

from torch import Tensor, nn

from adr_scale.models.layers import conv3x3, init_weights
from adr_scale.models.registry import ActFactory, register_model

WIDTHS = (16, 32)  # channels of the two conv layers
WIDE_WIDTHS = (64, 128)  # tiny_wide: enough capacity to fit adversarial digits (robust overfitting)
POOL = 2  # output side of the average pool: POOL x POOL cells per channel


class TinyNet(nn.Module):
    """conv3x3-[BN]-act, conv3x3/2-[BN]-act, 2x2 average pool, linear.

    The 2x2 pool keeps where strokes are (a global pool on 8x8 digits leaves ~50 % accuracy).

    With `batch_norm=False` the convs carry biases instead (the shift BN would provide); that variant
    has no running statistics, so multi-worker DDP runs can be compared exactly with one worker.
    """

    def __init__(
        self, num_classes: int, act: ActFactory, in_channels: int, batch_norm: bool,
        widths: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        c1, c2 = widths or WIDTHS
        self.features = nn.Sequential(
            conv3x3(in_channels, c1, bias=not batch_norm),
            nn.BatchNorm2d(c1) if batch_norm else nn.Identity(),
            act(),
            conv3x3(c1, c2, stride=2, bias=not batch_norm),
            nn.BatchNorm2d(c2) if batch_norm else nn.Identity(),
            act(),
        )
        self.pool = nn.AdaptiveAvgPool2d(POOL)
        self.fc = nn.Linear(c2 * POOL * POOL, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W), already normalised
        out = self.features(x)  # (B, c2, H/2, W/2)
        return self.fc(self.pool(out).flatten(1))  # (B, c2 * 4) -> (B, num_classes)


@register_model("tiny")
def tiny(num_classes: int, act: ActFactory, in_channels: int) -> nn.Module:
    return TinyNet(num_classes, act, in_channels, batch_norm=True)


@register_model("tiny_nonorm")
def tiny_nonorm(num_classes: int, act: ActFactory, in_channels: int) -> nn.Module:
    return TinyNet(num_classes, act, in_channels, batch_norm=False)


@register_model("tiny_wide")
def tiny_wide(num_classes: int, act: ActFactory, in_channels: int) -> nn.Module:
    """tiny at 4x the width (~80k weights on digits): the digits_overfit preset's network."""
    return TinyNet(num_classes, act, in_channels, batch_norm=True, widths=WIDE_WIDTHS)
