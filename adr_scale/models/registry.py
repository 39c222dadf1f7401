"""Model registry: architectures are registered by name and built through `create_model` (timm-style).

Every model returned by `create_model` takes inputs in [0, 1] and normalises them itself, so attacks,
exported weights and evaluation never need to know the dataset statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn

from adr_scale.config import allow_name
from adr_scale.models.normalize import Normalize

ActFactory = Callable[[], nn.Module]
# A builder returns the network body (no normalisation): builder(num_classes, act, in_channels).
Builder = Callable[[int, ActFactory, int], nn.Module]

_MODELS: dict[str, Builder] = {}

# in-place=False: forward hooks and autograd may still hold the pre-activation tensor.
_ACTIVATIONS: dict[str, ActFactory] = {
    "relu": partial(nn.ReLU, inplace=False),
    "silu": partial(nn.SiLU, inplace=False),  # Swish: more robust than ReLU, Gowal et al. 2020
}

DEFAULT_MEAN_STD = 0.5  # per channel, maps [0, 1] to [-1, 1] when no dataset statistics are given


class NormalizedNet(nn.Module):
    """`Normalize` followed by the architecture body; the public model type of this package."""

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize  # registered first: it is the first module of the model
        self.net = net

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, H, W) in [0, 1]
        return self.net(self.normalize(x))  # (B, num_classes)


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers `builder(num_classes, act, in_channels) -> nn.Module` under `name`."""

    def decorator(builder: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model.arch: architecture '{name}' is already registered")
        _MODELS[name] = builder
        allow_name("model.arch", name)  # so RunConfig validation accepts it too
        return builder

    return decorator


def list_models() -> list[str]:
    """Sorted names of all registered architectures."""
    return sorted(_MODELS)


def _activation_factory(activation: str) -> ActFactory:
    if activation not in _ACTIVATIONS:
        allowed = ", ".join(sorted(_ACTIVATIONS))
        raise ValueError(f"model.activation: unknown activation '{activation}'; allowed: {allowed}")
    return _ACTIVATIONS[activation]


def _stats(field: str, values: tuple[float, ...] | None, in_channels: int) -> tuple[float, ...]:
    if values is None:
        return (DEFAULT_MEAN_STD,) * in_channels
    if len(values) != in_channels:
        raise ValueError(
            f"model.{field}: expected {in_channels} values (one per input channel), got {tuple(values)}"
        )
    return tuple(float(v) for v in values)


def create_model(
    name: str,
    num_classes: int,
    activation: str = "relu",
    *,
    in_channels: int = 3,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> nn.Module:
    """Build architecture `name` for inputs in [0, 1]; `mean`/`std` default to 0.5 per channel."""
    if name not in _MODELS:
        raise ValueError(
            f"model.arch: unknown architecture '{name}'; allowed: {', '.join(list_models())}"
        )
    if num_classes < 1:
        raise ValueError(f"model.num_classes: must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"model.in_channels: must be >= 1, got {in_channels}")
    act = _activation_factory(activation)
    normalize = Normalize(_stats("mean", mean, in_channels), _stats("std", std, in_channels))
    return NormalizedNet(normalize, _MODELS[name](num_classes, act, in_channels))
