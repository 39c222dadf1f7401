"""Model registry: parameter counts, shapes, activations, in-model normalisation, errors, state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adr_scale.models import Normalize, create_model, list_models, register_model
from adr_scale.models import registry as registry_module

# Standard CIFAR-10 (10 classes, 3 channels) counts. preact_resnet18 includes the final BN-act of
# He et al. 2016b (the pytorch-cifar variant without it has 11,171,146); the WRN counts are TRADES'.
PARAM_COUNTS = {
    "resnet18": 11_173_962,
    "preact_resnet18": 11_172_170,
    "wrn34_10": 46_160_474,
    "wrn28_10": 36_479_194,
}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


@pytest.fixture(autouse=True)
def _few_threads():
    # The unit tier runs on 2 CPU cores; keep timings comparable across machines.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_is_sorted_and_complete():
    names = list_models()
    assert names == sorted(names)
    assert set(names) >= {*PARAM_COUNTS, "tiny", "tiny_nonorm"}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_count_matches_reference(name):
    assert n_params(create_model(name, num_classes=10)) == PARAM_COUNTS[name]


def test_tiny_models_are_small_and_tiny_has_batchnorm():
    tiny = create_model("tiny", 10)
    nonorm = create_model("tiny_nonorm", 10)
    assert n_params(tiny) == 6_426  # 3*9*16 + 32 + 16*9*32 + 64 + 32*4*10 + 10
    assert n_params(nonorm) == 6_378  # conv biases (16 + 32) replace BN affine (96)
    assert n_params(create_model("tiny", 10, in_channels=1)) < 20_000
    assert any(isinstance(m, nn.BatchNorm2d) for m in tiny.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in nonorm.modules())
    # Only the normalisation statistics are buffers: no running stats to diverge across workers.
    assert sorted(name for name, _ in nonorm.named_buffers()) == ["normalize.mean", "normalize.std"]


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18"])
@pytest.mark.parametrize("size", [32, 64])  # CIFAR and TinyImageNet
def test_resnet_output_shape(name, size):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))  # (B, C, H, W)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["wrn28_10", "wrn34_10"])
def test_wideresnet_output_shape(name):
    model = create_model(name, num_classes=100).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 100)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["tiny", "tiny_nonorm"])
def test_tiny_output_shape_on_digits_and_cifar(name):
    digits = create_model(name, num_classes=10, in_channels=1).eval()
    cifar = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert digits(torch.rand(5, 1, 8, 8)).shape == (5, 10)  # scikit-learn digits
        assert cifar(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_input_gradient_flows():
    # Attacks differentiate the loss w.r.t. the [0, 1] input.
    model = create_model("tiny", 3, in_channels=1)
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    model(x).logsumexp(dim=1).sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(
    ("activation", "wanted", "banned"),
    [
        ("silu", nn.SiLU, nn.ReLU),
        ("relu", nn.ReLU, nn.SiLU),
    ],
)
def test_every_activation_follows_the_config(name, activation, wanted, banned):
    modules = list(create_model(name, 10, activation).modules())
    assert not any(isinstance(m, banned) for m in modules)
    acts = [m for m in modules if isinstance(m, wanted)]
    assert len(acts) >= 2
    assert not any(m.inplace for m in acts)


def test_normalize_is_first_module_with_default_half():
    model = create_model("tiny", 10, in_channels=1)
    first = next(iter(model.children()))
    assert isinstance(first, Normalize)
    assert first.mean.shape == (1, 1, 1, 1)
    assert first.mean.item() == 0.5
    assert first.std.item() == 0.5


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
def test_model_normalises_its_input(name):
    torch.manual_seed(0)
    model = create_model(name, 10, mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    identity = create_model(name, 10, mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    identity.net.load_state_dict(model.net.state_dict())
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)  # (B, 10)
        expected = identity((x - mean) / std)
        unnormalised = identity(x)
    assert (out - expected).abs().max() < 1e-5
    assert (out - unnormalised).abs().max() > 1e-3  # the statistics actually matter


def test_normalisation_buffers_survive_state_dict_round_trip():
    torch.manual_seed(0)
    model = create_model("tiny", 10, mean=CIFAR_MEAN, std=CIFAR_STD)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))  # move the BN running stats off their initial values
    state = model.state_dict()
    assert state["normalize.mean"].shape == (1, 3, 1, 1)
    assert state["normalize.std"].flatten().tolist() == pytest.approx(CIFAR_STD)

    fresh = create_model("tiny", 10)  # default 0.5 statistics until the weights are loaded
    fresh.load_state_dict(state)
    assert fresh.normalize.mean.flatten().tolist() == pytest.approx(CIFAR_MEAN)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_unknown_architecture_message():
    with pytest.raises(ValueError, match="model.arch") as err:
        create_model("xyz", 10)
    message = str(err.value)
    assert "'xyz'" in message
    assert "\n" not in message
    assert message.endswith("allowed: " + ", ".join(list_models()))


def test_unknown_activation_message():
    with pytest.raises(ValueError) as err:
        create_model("tiny", 10, "gelu")
    assert str(err.value) == "model.activation: unknown activation 'gelu'; allowed: relu, silu"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mean": (0.5, 0.5)}, "model.mean"),
        ({"std": (0.5,)}, "model.std"),
        ({"std": (0.5, 0.0, 0.5)}, "model.std"),
        ({"num_classes": 0}, "model.num_classes"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    args = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=field):
        create_model("tiny", **args)


def test_register_model_adds_a_buildable_architecture(monkeypatch):
    monkeypatch.setattr(registry_module, "_MODELS", dict(registry_module._MODELS))

    @register_model("linear_probe")
    def linear_probe(num_classes, act, in_channels):
        return nn.Sequential(nn.Flatten(), act(), nn.LazyLinear(num_classes))

    assert "linear_probe" in list_models()
    model = create_model("linear_probe", 4, "silu", in_channels=1)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_model("linear_probe")(linear_probe)


def test_config_names_are_the_registries_and_a_registered_model_is_accepted():
    from adr_scale.config import ACTIVATIONS, ARCHS, DATASETS, apply_overrides, get_preset
    from adr_scale.data import DATASET_INFO
    from adr_scale.models import list_models, register_model
    from adr_scale.models.registry import _ACTIVATIONS

    assert sorted(ARCHS) == list_models() and sorted(DATASETS) == sorted(DATASET_INFO)  # named only
    assert sorted(ACTIVATIONS) == sorted(_ACTIVATIONS)

    from adr_scale.config.schema import _ALLOWED
    from adr_scale.models.registry import _MODELS

    @register_model("test_only_linear")
    def linear(num_classes, act, in_channels):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    try:
        cfg = apply_overrides(get_preset("smoke"), ["model.arch=test_only_linear"])  # validates
        assert cfg.model.arch == "test_only_linear"
    finally:  # leave the registries as the other tests expect them
        _MODELS.pop("test_only_linear")
        _ALLOWED["model.arch"].discard("test_only_linear")
