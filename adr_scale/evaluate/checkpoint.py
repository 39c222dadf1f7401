"""A training checkpoint's network, ready to attack, and the test split it is attacked on."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adr_scale.config import ConfigError, RunConfig
from adr_scale.data import DATASET_INFO, ArrayDataset, DatasetInfo, load_splits
from adr_scale.engine import build_model, config_of, nonfinite_tensors


@dataclass
class LoadedModel:
    module: nn.Module  # eval mode, no parameter gradients, on the evaluation device
    cfg: RunConfig
    info: DatasetInfo
    path: Path
    which: str  # ema | student
    epoch: int
    step: int


def read_checkpoint(path: Path, flag: str) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{flag}: {str(path)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"{flag}: {str(path)!r} is a directory; pass a .pt file "
                          "(or --run for a run directory)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a file that is not a checkpoint
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(f"{flag}: {str(path)!r} is not a PyTorch checkpoint "
                          f"(torch.load failed: {first})") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        found = ", ".join(sorted(map(str, ckpt))[:5]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(f"{flag}: {str(path)!r} is not an adr_scale training checkpoint (no "
                          f"'model' and 'config' entries; found {found}); an exported model.pt "
                          "loads with adr_scale.evaluate.load_exported")
    return ckpt


def _check_weights(model: nn.Module, weights: Any, path: Path, which: str, arch: str) -> None:
    """Compare names and shapes first, so a wrong architecture is one line, not a torch dump."""
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise ConfigError(f"{str(path)!r}: its {which!r} entry is not a state_dict")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    reshaped = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    if not (missing or unexpected or reshaped):
        return
    if reshaped:
        k = reshaped[0]
        example = f"{k!r} is {list(got[k])} in the file, {list(want[k])} in the model"
    else:
        example = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
    raise ConfigError(f"{str(path)!r}: its {which} weights do not fit model.arch={arch!r} of its "
                      f"config ({len(missing)} missing, {len(unexpected)} unexpected, "
                      f"{len(reshaped)} of another shape; e.g. {example})")


def load_model(path: str | Path, which: str | None = None, device: str | torch.device = "cpu",
               flag: str = "--checkpoint") -> LoadedModel:
    """The student or EMA (WA) network of a training checkpoint, ready to attack."""
    path = Path(path)
    ckpt = read_checkpoint(path, flag)
    try:
        cfg = config_of(ckpt)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {str(path)!r} holds an invalid config: {exc}") from None
    which = which or ("ema" if cfg.train.wa else "student")
    key = "ema" if which == "ema" else "model"
    if key not in ckpt:
        raise ConfigError(f"--model: {str(path)!r} holds no {which!r} weights; allowed: student")
    info = DATASET_INFO[cfg.data.dataset]
    model = build_model(cfg, info)
    _check_weights(model, ckpt[key], path, which, cfg.model.arch)
    bad = nonfinite_tensors(ckpt[key])
    if bad:  # a diverged net predicts one class: its accuracy would look like a result
        raise ConfigError(f"{flag}: {str(path)!r} holds non-finite {which} weights ({len(bad)} "
                          f"tensors with NaN or inf, e.g. {bad[0]!r}); the run diverged")
    model.load_state_dict(ckpt[key])
    model.eval().requires_grad_(False)  # attacks need input gradients only
    return LoadedModel(module=model.to(device), cfg=cfg, info=info, path=path, which=which,
                       epoch=int(ckpt.get("epoch", -1)), step=int(ckpt.get("step", -1)))


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
