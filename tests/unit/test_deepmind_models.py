"""DeepMind-style PreAct-ResNet-18 / WRN-34-10 (the official ADR networks): parameter counts, the
block against a functional reference of its published definition, and official state_dicts
loading through the key map with the same logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adr_scale.models import create_model
from adr_scale.models.deepmind import (
    DMPreActBlock,
    SameConv2d,
    deepmind_key,
    from_deepmind_state_dict,
    load_deepmind_state_dict,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial affine parameters and running statistics, so eval-mode BN is not an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(m.running_var.shape, generator=g))


def test_parameter_counts_match_the_official_networks():
    # Official ADR / DeepMind PreAct-ResNet-18: 3x3 shortcut convs on the raw block input.
    assert n_params(create_model("preact_resnet18_dm", 10)) == 12_548_426
    assert n_params(create_model("preact_resnet18_dm", 100)) == 12_548_426 + 90 * 513
    assert n_params(create_model("preact_resnet18", 10)) == 11_172_170  # Wong / Rice, for contrast


def test_same_conv_pads_right_and_bottom_at_stride_two():
    conv = SameConv2d(1, 1, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each 3x3 window
    x = torch.arange(36.0).view(1, 1, 6, 6)
    # TF-SAME at stride 2 on 6x6: windows start at rows / columns 0, 2, 4 (no top / left pad);
    # PyTorch's padding=1 would start them at -1, 1, 3.
    assert torch.equal(conv(x)[0, 0], x[0, 0, 0::2, 0::2])
    assert SameConv2d(1, 1, stride=1)(torch.rand(1, 1, 5, 5)).shape == (1, 1, 5, 5)


def _reference_block(x, blk: DMPreActBlock, stride: int):
    """DeepMind's published PreAct block, written as functions: out = relu(bn0(x));
    shortcut = conv3x3_s(pad_same(x)); out = conv_2(relu(bn1(conv_1(pad_same(out))))) + shortcut,
    pad_same = (1, 1, 1, 1) at stride 1, (0, 1, 0, 1) at stride 2; BN in inference form."""

    def bn(t, m):
        scale = m.weight / torch.sqrt(m.running_var + m.eps)
        return (t - m.running_mean[:, None, None]) * scale[:, None, None] + m.bias[:, None, None]

    pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)
    out = torch.relu(bn(x, blk.bn1))
    shortcut = F.conv2d(F.pad(x, pad), blk.shortcut.weight, stride=stride)
    out = F.conv2d(F.pad(out, pad), blk.conv1.weight, stride=stride)
    out = F.conv2d(torch.relu(bn(out, blk.bn2)), blk.conv2.weight, padding=1)
    return out + shortcut


@pytest.mark.parametrize("stride", [1, 2])
def test_preact_block_matches_its_published_definition(stride):
    torch.manual_seed(0)
    blk = DMPreActBlock(4, 8, stride, nn.ReLU)
    _randomise_bn(blk, 1)
    blk.eval()
    x = torch.randn(2, 4, 8, 8)  # (B, C, H, W), fixed by the seed
    with torch.no_grad():
        out = blk(x)
        ref = _reference_block(x, blk, stride)
    assert out.shape == (2, 8, 8 // stride, 8 // stride)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert blk.shortcut.kernel_size == (3, 3)  # on the raw input (the reference's `x`)


class _OfficialBlock(nn.Module):
    """The official / DeepMind PreAct block's layer list, names as published."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.relu_0 = nn.ReLU()
        self.conv_2d_1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.relu_1 = nn.ReLU()
        self.conv_2d_2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = stride != 1 or cin != cout
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(cin, cout, 3, stride=stride, padding=0, bias=False)

    def pad(self, t):
        return F.pad(t, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))

    def forward(self, x):
        out = self.relu_0(self.batchnorm_0(x))
        skip = self.shortcut(self.pad(x)) if self.has_shortcut else x
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(self.conv_2d_1(self.pad(out)))))
        return out + skip


class _OfficialPreActResNet18(nn.Module):
    """conv_2d, layer_0..layer_3 (2 blocks each: 64, 128, 256, 512 channels, strides 1, 2, 2, 2),
    batchnorm, relu, average pool, logits; normalisation by fixed mean / std tensors."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
        self.conv_2d = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        cin = 64
        for s, (cout, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True)):
            setattr(self, f"layer_{s}", nn.Sequential(_OfficialBlock(cin, cout, stride),
                                                      _OfficialBlock(cout, cout, 1)))
            cin = cout
        self.batchnorm = nn.BatchNorm2d(512)
        self.relu = nn.ReLU()
        self.logits = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.conv_2d((x - self.mean) / self.std)
        for s in range(4):
            out = getattr(self, f"layer_{s}")(out)
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


def test_official_preact_state_dict_loads_through_the_key_map_with_the_same_logits():
    torch.manual_seed(0)
    official = _OfficialPreActResNet18(10)
    _randomise_bn(official, 2)
    official.eval()
    ours = create_model("preact_resnet18_dm", 10, "relu", mean=CIFAR10_MEAN, std=CIFAR10_STD)
    # As saved by a DataParallel run (DeepMind's files): a 'module.' prefix on every key.
    state = {f"module.{k}": v for k, v in official.state_dict().items()}
    load_deepmind_state_dict(ours, state)
    ours.eval()
    x = torch.rand(2, 3, 16, 16)  # (B, C, H, W) in [0, 1]; 16x16 keeps the test fast
    with torch.no_grad():
        want, got = official(x), ours(x)
    assert (got - want).abs().max().item() < 1e-5
    assert want.abs().max().item() > 0.1  # not a trivially small output


def test_key_map_names_every_official_key_and_rejects_others():
    assert deepmind_key("conv_2d.weight", 2) == "net.stem.weight"
    assert deepmind_key("layer_3.1.conv_2d_2.weight", 2) == "net.layers.7.conv2.weight"
    assert deepmind_key("layer_1.0.shortcut.weight", 2) == "net.layers.2.shortcut.weight"
    assert deepmind_key("module.batchnorm.running_var", 2) == "net.bn.running_var"
    assert deepmind_key("logits.bias", 2) == "net.fc.bias"
    # WRN-34-10: 5 blocks per group, DeepMind / official names.
    assert deepmind_key("init_conv.weight", 5) == "net.stem.weight"
    assert deepmind_key("layer.2.block.4.conv_1.weight", 5) == "net.layers.14.conv2.weight"
    assert deepmind_key("layer.1.block.0.batchnorm_0.num_batches_tracked", 5) == (
        "net.layers.5.bn1.num_batches_tracked")
    with pytest.raises(ValueError, match="unknown key 'head.weight'"):
        deepmind_key("head.weight", 2)


def test_official_wrn_key_list_maps_onto_wrn34_10_dm_exactly():
    ours = create_model("wrn34_10_dm", 10)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    # The official / DeepMind WRN-34-10 layout: 3 groups of 5 blocks, widths 160, 320, 640.
    official = {"init_conv.weight": torch.zeros(16, 3, 3, 3)}
    cin = 16
    for g, cout in enumerate((160, 320, 640)):
        for j in range(5):
            c = cin if j == 0 else cout
            block = f"layer.{g}.block.{j}."
            for bn, width in (("batchnorm_0", c), ("batchnorm_1", cout)):
                for t in ("weight", "bias", "running_mean", "running_var"):
                    official[block + f"{bn}.{t}"] = torch.zeros(width)
                official[block + f"{bn}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
            official[block + "conv_0.weight"] = torch.zeros(cout, c, 3, 3)
            official[block + "conv_1.weight"] = torch.zeros(cout, cout, 3, 3)
            if c != cout:
                official[block + "shortcut.weight"] = torch.zeros(cout, c, 1, 1)
        cin = cout
    for t in ("weight", "bias", "running_mean", "running_var"):
        official[f"batchnorm.{t}"] = torch.zeros(640)
    official["batchnorm.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    official |= {"logits.weight": torch.zeros(10, 640), "logits.bias": torch.zeros(10)}
    mapped = from_deepmind_state_dict(ours, official)
    assert {k: v.shape for k, v in mapped.items()} == shapes
    with pytest.raises(ValueError, match="shape"):
        from_deepmind_state_dict(ours, official | {"logits.weight": torch.zeros(100, 640)})


def test_tf_same_padding_is_not_symmetric_padding():
    """Same weights, same output shape, other values: the stride-2 grid is shifted by a pixel
    (on a random-init WRN-34-10 that alone moves the logits by ~6 % relative)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    same = SameConv2d(3, 4, stride=2)
    sym = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    sym.weight = same.weight
    with torch.no_grad():
        assert same(x).shape == sym(x).shape == (2, 4, 8, 8)
        assert not torch.allclose(same(x), sym(x))
        # SAME's window k starts at pixel 2k; padding=1's at 2k - 1: one pixel apart.
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # x moved up and left by one pixel
        assert torch.allclose(same(x)[:, :, 1:, 1:], sym(shifted)[:, :, 1:, 1:], atol=1e-6)
