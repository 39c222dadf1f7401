"""A training checkpoint: its state (`checkpoint_state`, `load_state`), reading it (weights_only),
its format, its config and which network it serves. One place for resume (the drivers, the Ray
workers), evaluate and the DDPM labeller (data_pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adr_scale.adr import _unwrap
from adr_scale.config import ConfigError, RunConfig, from_dict, to_dict, validate
from adr_scale.data import DatasetInfo, dataset_info
from adr_scale.distributed import gather_objects, rank_and_world, rank_seed
from adr_scale.models import create_model

CHECKPOINT_FORMAT = 1  # checkpoint_state's layout; another value is refused on load
WEIGHTS_KEY = {"student": "model", "ema": "ema"}  # network name -> its checkpoint entry


def selected_network(cfg: RunConfig) -> str:
    """The network a run reports and serves: the EMA teacher with train.wa (WA = the EMA model,
    the paper's "+WA" rows), else the student."""
    return "ema" if cfg.train.wa else "student"


def build_model(cfg: RunConfig, info: DatasetInfo) -> nn.Module:
    return create_model(cfg.model.arch, info.num_classes, cfg.model.activation,
                        in_channels=info.in_channels, mean=info.mean, std=info.std)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw dict, tensors on the CPU; weights_only, so a file cannot run code on load."""
    return torch.load(path, map_location="cpu", weights_only=True)


def config_of(ckpt: dict[str, Any]) -> RunConfig:
    return validate(from_dict(ckpt["config"], source="checkpoint config"))


def nonfinite_tensors(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict holding a NaN or an infinity."""
    return [name for name, t in weights.items()
            if t.is_floating_point() and not torch.isfinite(t).all()]


def read_checkpoint(path: Path, flag: str) -> dict[str, Any]:
    """A training checkpoint given on the command line as `flag`; one-line errors otherwise."""
    if not path.exists():
        raise ConfigError(f"{flag}: {str(path)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"{flag}: {str(path)!r} is a directory; pass a .pt file "
                          "(or --run for a run directory)")
    try:
        ckpt = load_checkpoint(path)
    except Exception as exc:  # torch.load raises many types for a file that is not a checkpoint
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(f"{flag}: {str(path)!r} is not a PyTorch checkpoint "
                          f"(torch.load failed: {first})") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        found = ", ".join(sorted(map(str, ckpt))[:5]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(f"{flag}: {str(path)!r} is not an adr_scale training checkpoint (no "
                          f"'model' and 'config' entries; found {found}); an exported model.pt "
                          "loads with adr_scale.evaluate.load_exported")
    if ckpt.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise ConfigError(f"{flag}: {str(path)!r} has checkpoint format {ckpt['format']!r}; "
                          f"this adr_scale reads format {CHECKPOINT_FORMAT}")
    return ckpt


@dataclass
class Network:
    module: nn.Module  # on the CPU, in train mode, as built
    cfg: RunConfig
    info: DatasetInfo
    path: Path
    which: str  # ema | student
    epoch: int
    step: int


def load_network(path: str | Path, which: str | None = None, flag: str = "--checkpoint",
                 ) -> Network:
    """The student or EMA network of a checkpoint (default: `selected_network`), its weights
    checked for shape and finiteness first so a mismatch is one line, not a torch dump."""
    path = Path(path)
    ckpt = read_checkpoint(path, flag)
    try:
        cfg = config_of(ckpt)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {str(path)!r} holds an invalid config: {exc}") from None
    which = which or selected_network(cfg)
    key = WEIGHTS_KEY[which]
    if key not in ckpt:
        raise ConfigError(f"--model: {str(path)!r} holds no {which!r} weights; allowed: student")
    info = dataset_info(cfg.data)  # a generic form's classes and stats from its stored config
    model = build_model(cfg, info)
    _check_weights(model, ckpt[key], path, which, cfg.model.arch)
    bad = nonfinite_tensors(ckpt[key])
    if bad:  # a diverged net predicts one class: its accuracy would look like a result
        raise ConfigError(f"{flag}: {str(path)!r} holds non-finite {which} weights ({len(bad)} "
                          f"tensors with NaN or inf, e.g. {bad[0]!r}); the run diverged")
    model.load_state_dict(ckpt[key])
    return Network(module=model, cfg=cfg, info=info, path=path, which=which,
                   epoch=int(ckpt.get("epoch", -1)), step=int(ckpt.get("step", -1)))


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


# ---------------------------------------------------------------------------------------------
# A training state (the engine's TrainState, untyped here: the engine imports this module)


def checkpoint_state(state) -> dict[str, Any]:
    """An `engine.TrainState`'s student, EMA, optimizer, schedule position, RNG states and the
    resolved config."""
    rng = {"cpu": torch.get_rng_state()}
    if state.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(state.device)
    return {
        "format": CHECKPOINT_FORMAT,
        "model": _unwrap(state.model).state_dict(),
        "ema": state.ema.module.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "step": state.step,
        "epoch": state.epoch,
        "total_steps": state.total_steps,
        "steps_per_epoch": state.steps_per_epoch,
        "best_epoch": state.best_epoch,
        "best_robust_acc": state.best_robust_acc,
        "rng": gather_objects(rng),  # one entry per rank
        "history": state.history,
        "config": to_dict(state.cfg),
    }


def load_state(state, ckpt: dict[str, Any]) -> None:
    """`checkpoint_state`'s dict back into an `engine.TrainState` built for the same config."""
    _unwrap(state.model).load_state_dict(ckpt["model"])
    state.ema.module.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.step, state.epoch = ckpt["step"], ckpt["epoch"]
    state.best_epoch, state.best_robust_acc = ckpt["best_epoch"], ckpt["best_robust_acc"]
    state.history = list(ckpt["history"])
    rank, world = rank_and_world()
    if len(ckpt["rng"]) == world:  # same world size: every rank continues its own stream
        rng = ckpt["rng"][rank]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and state.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], state.device)
    else:  # a resized job: fresh, still deterministic, streams
        torch.manual_seed(rank_seed(state.cfg.seed, rank) + 7_919 * state.epoch)
