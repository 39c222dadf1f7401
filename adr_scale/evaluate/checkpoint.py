"""A training checkpoint's network, ready to attack, and the test split it is attacked on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from adr_scale.checkpoint import Network, load_network
from adr_scale.config import ConfigError, RunConfig
from adr_scale.data import ArrayDataset, load_splits

LoadedModel = Network  # after load_model: eval mode, no parameter gradients, on its device


def load_model(path: str | Path, which: str | None = None, device: str | torch.device = "cpu",
               flag: str = "--checkpoint") -> LoadedModel:
    """The student or EMA (WA) network of a training checkpoint, ready to attack."""
    net = load_network(path, which, flag)
    net.module = net.module.eval().requires_grad_(False).to(device)  # attacks need input grads only
    return net


def load_test_set(cfg: RunConfig, data_root: str | None, n_examples: int | None) -> ArrayDataset:
    """The first n images of the test split (never validation or training images)."""
    if data_root is not None and cfg.data.dataset == "digits":
        raise ConfigError(f"--data-root: {data_root!r} is not read: digits is bundled with "
                          "scikit-learn; drop --data-root")
    data_cfg = replace(cfg.data, root=data_root) if data_root is not None else cfg.data
    try:
        test = load_splits(data_cfg).test
    except ConfigError as exc:
        if data_root is not None:
            raise ConfigError(f"--data-root: {exc}") from None
        raise ConfigError(f"{exc} (the checkpoint's data.root; override it with --data-root)") from None
    if n_examples is None:
        return test
    if not 1 <= n_examples <= len(test):
        raise ConfigError(f"--n-examples: invalid value {n_examples}; allowed: 1 to {len(test)} "
                          f"(the {cfg.data.dataset} test split)")
    return ArrayDataset(test.images[:n_examples].contiguous(), test.labels[:n_examples])
