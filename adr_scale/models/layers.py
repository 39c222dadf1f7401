"""Building blocks shared by the architectures."""

from __future__ import annotations

from torch import nn


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    # No bias by default: a following BatchNorm has its own shift (He et al. 2016).
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, padding=0, bias=False)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, BN as identity, zero biases (He et al. 2015; torchvision)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BatchNorm (and SyncBatchNorm) layer."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The scales and shifts of the BatchNorm layers: what the official ADR code and Wang et al.
    exempt from weight decay with auxiliary data (they select parameters named 'batchnorm')."""
    return [p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)]
