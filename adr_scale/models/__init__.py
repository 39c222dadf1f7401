"""Model registry and architectures; every model takes [0, 1] inputs and normalises them itself."""

# Importing the architecture modules registers them with the registry.
from adr_scale.models import deepmind, resnet, tiny, wideresnet  # noqa: F401
from adr_scale.models.normalize import Normalize
from adr_scale.models.registry import create_model, list_models, register_model

__all__ = ["Normalize", "create_model", "list_models", "register_model"]
