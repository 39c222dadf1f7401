"""Export in the model zoo form: a plain state_dict and the arguments of create_model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adr_scale.config import ConfigError
from adr_scale.models.registry import create_model
from adr_scale.run.directory import atomic_torch_save, atomic_write_text

EXPORT_FORMAT = 1


def export_model(loaded: Any, out: str | Path, eps: float) -> Path:
    """Write out/model.pt (state_dict, normalisation included) and out/model.json of a
    `adr_scale.evaluate.LoadedModel`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = loaded.info
    meta = {
        "format": EXPORT_FORMAT,
        "architecture": loaded.cfg.model.arch, "num_classes": info.num_classes,
        "activation": loaded.cfg.model.activation, "in_channels": info.in_channels,
        "mean": list(info.mean), "std": list(info.std), "dataset": loaded.cfg.data.dataset,
        "eps": eps, "threat_model": "Linf", "inputs": "(B, C, H, W) in [0, 1]; the model normalises",
        "source": {"checkpoint": str(loaded.path.resolve()), "epoch": loaded.epoch,
                   "model": loaded.which},
    }
    state = {k: v.detach().cpu().clone() for k, v in loaded.module.state_dict().items()}
    atomic_torch_save(state, out / "model.pt", "--export")  # a full disk: one line, no torn file
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2) + "\n", "--export")
    return out


def load_exported(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The network of an `export_model` directory, in eval mode, taking [0, 1] inputs."""
    d = Path(directory)
    for name in ("model.json", "model.pt"):
        if not (d / name).is_file():
            raise ConfigError(f"load_exported: {str(d / name)!r} does not exist")
    meta = json.loads((d / "model.json").read_text())
    if meta.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"load_exported: {str(d / 'model.json')!r} has format "
                          f"{meta.get('format')!r}; allowed: {EXPORT_FORMAT} (export it again)")
    model = create_model(meta["architecture"], meta["num_classes"], meta["activation"],
                         in_channels=meta["in_channels"], mean=tuple(meta["mean"]),
                         std=tuple(meta["std"]))
    model.load_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True))
    return model.eval().to(device)
