"""DeepMind's pre-activation ResNet-18 and WideResNet-34-10, as the official ADR code runs them.

The official ADR repository (yuyuwu5/ADR, src/model/preact_resnet.py and wideresnet.py) and
DM-Improves-AT (Wang et al. 2023) use the PyTorch port of DeepMind's model zoo (Gowal et al. 2020,
Rebuffi et al. 2021). Two things set it apart from the Wong / Rice networks in resnet.py:

- TF-SAME padding. A 3x3 convolution of stride 2 pads one row and one column at the bottom and the
  right only (TensorFlow's 'SAME' on an even-sized input); stride 1 pads one pixel on every side.
  The sampling grid is shifted by one pixel against PyTorch's symmetric padding=1, so the same
  weights give other logits (7 % relative difference on WRN-34-10).
- In the PreAct-ResNet block, the projection shortcut is a 3x3 convolution (TF-SAME, stride s) of
  the *raw* block input, not a 1x1 convolution of the pre-activated one: 12,548,426 parameters for
  10 classes instead of 11,172,170. The WRN block keeps the 1x1 shortcut on the pre-activated input.

Initialisation is PyTorch's default, as in the official ADR code (DeepMind's WRN port re-draws the
convolutions from N(0, 2 / fan_out); that does not change what a checkpoint loads).

Official and DeepMind state_dicts load after `from_deepmind_state_dict`, whose key map is

    PreAct-ResNet-18 (official ADR / DeepMind / DM-Improves-AT)   ->  this package
      conv_2d.*                                                   ->  net.stem.*
      layer_{s}.{j}.batchnorm_0 | conv_2d_1 | batchnorm_1 | conv_2d_2 | shortcut
                                    ->  net.layers.{2 s + j}.bn1 | conv1 | bn2 | conv2 | shortcut
      batchnorm.*  logits.*                                       ->  net.bn.*  net.fc.*
    WRN-34-10
      init_conv.*                                                 ->  net.stem.*
      layer.{g}.block.{j}.batchnorm_0 | conv_0 | batchnorm_1 | conv_1 | shortcut
                                    ->  net.layers.{5 g + j}.bn1 | conv1 | bn2 | conv2 | shortcut
      batchnorm.*  logits.*                                       ->  net.bn.*  net.fc.*

A leading 'module.' (DataParallel, timm's ModelEmaV2) is dropped. Those files hold no input
normalisation (their models keep mean / std as plain attributes): `net.normalize.mean` / `std`
keep the model's own values, which must be the dataset statistics the checkpoint was trained with
(CIFAR-10 / CIFAR-100 mean and std, the same numbers in both code bases and in adr_scale.data).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adr_scale.models.layers import conv1x1, conv3x3
from adr_scale.models.registry import ActFactory, register_model

PREACT_WIDTHS = (64, 128, 256, 512)  # channels per stage
PREACT_STRIDES = (1, 2, 2, 2)
PREACT_BLOCKS = (2, 2, 2, 2)  # PreAct-ResNet-18
WRN_BASE_WIDTHS = (16, 32, 64)  # before widening
WRN_STRIDES = (1, 2, 2)


class SameConv2d(nn.Conv2d):
    """3x3 convolution with DeepMind's TF-SAME padding: (1, 1, 1, 1) at stride 1, (0, 1, 0, 1)
    (right and bottom only) at stride 2, which is TensorFlow's 'SAME' for even input sizes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        if stride not in (1, 2):
            raise ValueError(f"model.arch: TF-SAME convolution supports stride 1 or 2, got {stride}")
        super().__init__(in_ch, out_ch, kernel_size=3, stride=stride, padding=0, bias=False)
        self._pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)  # (left, right, top, bottom)

    def forward(self, x: Tensor) -> Tensor:  # (B, in, H, W) -> (B, out, H / stride, W / stride)
        return super().forward(F.pad(x, self._pad))


class DMPreActBlock(nn.Module):
    """BN-act-conv(SAME, stride)-BN-act-conv plus shortcut; the shortcut, where the shape changes,
    is a 3x3 SAME convolution of the raw input x (DeepMind's PreAct-ResNet block)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: ActFactory) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.act1 = act()
        self.conv1 = SameConv2d(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = act()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.shortcut: nn.Module | None = self._shortcut(in_ch, out_ch, stride)

    @staticmethod
    def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
        return SameConv2d(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else None

    def _skip(self, x: Tensor, activated: Tensor) -> Tensor:
        return x if self.shortcut is None else self.shortcut(x)  # the raw input, not `activated`

    def forward(self, x: Tensor) -> Tensor:  # (B, in_ch, H, W) -> (B, out_ch, H/s, W/s)
        out = self.act1(self.bn1(x))
        skip = self._skip(x, out)
        out = self.conv2(self.act2(self.bn2(self.conv1(out))))
        return out + skip


class DMWideBlock(DMPreActBlock):
    """The same block, but where the width changes the shortcut is a 1x1 convolution of the
    pre-activated input (DeepMind's WRN block)."""

    @staticmethod
    def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
        return conv1x1(in_ch, out_ch, stride) if in_ch != out_ch else None

    def _skip(self, x: Tensor, activated: Tensor) -> Tensor:
        return x if self.shortcut is None else self.shortcut(activated)


class DMNet(nn.Module):
    """Stem conv (3x3, padding 1), blocks, final BN-act, global average pool, linear."""

    def __init__(self, layers: list[nn.Module], stem_in: int, stem_out: int, num_classes: int,
                 act: ActFactory) -> None:
        super().__init__()
        self.stem = conv3x3(stem_in, stem_out)
        self.layers = nn.Sequential(*layers)
        width = layers[-1].conv2.out_channels
        self.bn = nn.BatchNorm2d(width)
        self.act = act()
        self.pool = nn.AdaptiveAvgPool2d(1)  # = AvgPool2d(4) / (8) of the originals on 32x32
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W), already normalised
        out = self.act(self.bn(self.layers(self.stem(x))))  # (B, width, H', W')
        return self.fc(self.pool(out).flatten(1))  # (B, num_classes)


def _stages(block: type[nn.Module], first_in: int, widths, strides, blocks, act) -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_ch = first_in
    for width, stride, n in zip(widths, strides, blocks, strict=True):
        for i in range(n):
            layers.append(block(in_ch, width, stride if i == 0 else 1, act))
            in_ch = width
    return layers


@register_model("preact_resnet18_dm")
def preact_resnet18_dm(num_classes: int, act: ActFactory, in_channels: int) -> nn.Module:
    layers = _stages(DMPreActBlock, PREACT_WIDTHS[0], PREACT_WIDTHS, PREACT_STRIDES,
                     PREACT_BLOCKS, act)
    return DMNet(layers, in_channels, PREACT_WIDTHS[0], num_classes, act)


def _wrn_dm(depth: int, widen: int, num_classes: int, act: ActFactory, in_channels: int):
    n = (depth - 4) // 6
    widths = [w * widen for w in WRN_BASE_WIDTHS]
    layers = _stages(DMWideBlock, WRN_BASE_WIDTHS[0], widths, WRN_STRIDES, (n, n, n), act)
    return DMNet(layers, in_channels, WRN_BASE_WIDTHS[0], num_classes, act)


@register_model("wrn34_10_dm")
def wrn34_10_dm(num_classes: int, act: ActFactory, in_channels: int) -> nn.Module:
    return _wrn_dm(34, 10, num_classes, act, in_channels)


# ---------------------------------------------------------------------------------------------
# Key map: official ADR / DeepMind / DM-Improves-AT state_dicts -> this package's

_BLOCK_PARTS = {"batchnorm_0": "bn1", "conv_2d_1": "conv1", "conv_0": "conv1",
                "batchnorm_1": "bn2", "conv_2d_2": "conv2", "conv_1": "conv2",
                "shortcut": "shortcut"}
_TOP_PARTS = {"conv_2d": "stem", "init_conv": "stem", "batchnorm": "bn", "logits": "fc"}
_PREACT_KEY = re.compile(r"layer_(\d+)\.(\d+)\.(\w+)\.(\w+)$")
_WRN_KEY = re.compile(r"layer\.(\d+)\.block\.(\d+)\.(\w+)\.(\w+)$")


def deepmind_key(key: str, blocks_per_stage: int) -> str:
    """One official / DeepMind key -> this package's (module docstring); ValueError if unknown."""
    key = key.removeprefix("module.")
    for pattern in (_PREACT_KEY, _WRN_KEY):
        match = pattern.match(key)
        if match and match.group(3) in _BLOCK_PARTS:
            stage, index, part, tensor = match.groups()
            flat = int(stage) * blocks_per_stage + int(index)
            return f"net.layers.{flat}.{_BLOCK_PARTS[part]}.{tensor}"
    top, _, tensor = key.partition(".")
    if top in _TOP_PARTS and "." not in tensor:
        return f"net.{_TOP_PARTS[top]}.{tensor}"
    raise ValueError(f"state_dict: unknown key {key!r} for a DeepMind PreAct-ResNet / WRN")


def from_deepmind_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state_dict of `model` (preact_resnet18_dm or wrn34_10_dm) holding `state`'s weights.

    `state` is an official ADR ("model" / "model_ema" entry of its checkpoints), DeepMind or
    DM-Improves-AT state_dict. Input normalisation comes from `model` (those files hold none).
    Load the result with model.load_state_dict(result) (strict).
    """
    net = getattr(model, "net", None)
    if not isinstance(net, DMNet):
        raise ValueError(f"model.arch: the DeepMind key map needs preact_resnet18_dm or "
                         f"wrn34_10_dm, got {type(net or model).__name__}")
    stages = len(PREACT_BLOCKS) if type(net.layers[0]) is DMPreActBlock else len(WRN_STRIDES)
    ours = model.state_dict()
    mapped = {deepmind_key(k, len(net.layers) // stages): v for k, v in state.items()}
    for key in ("normalize.mean", "normalize.std"):
        mapped[key] = ours[key]
    missing = sorted(set(ours) - set(mapped))
    extra = sorted(set(mapped) - set(ours))
    if missing or extra:
        raise ValueError(f"state_dict: does not fit {type(model).__name__}; missing "
                         f"{missing[:3]}, unexpected {extra[:3]}")
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise ValueError(f"state_dict: {key} has shape {tuple(value.shape)}; the model "
                             f"expects {tuple(ours[key].shape)} (another width or class count?)")
    return {k: mapped[k] for k in ours}


def load_deepmind_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """Load an official ADR / DeepMind state_dict into `model` in place through the key map."""
    with torch.no_grad():
        model.load_state_dict(from_deepmind_state_dict(model, state))
    return model
