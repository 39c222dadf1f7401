"""The training engine: one ADR training step, the epoch loop, evaluation and checkpoints. No Ray.

One step (Algorithm 1 of the paper): rectify the labels with the EMA teacher on the clean augmented
batch -> attack the student with the rectified label -> update the student (optionally at
adversarially perturbed weights, AWP) -> update the EMA teacher.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from adr_scale.adr import EMATeacher, _unwrap, rectify_labels
from adr_scale.attacks import pgd_linf, soft_cross_entropy
from adr_scale.awp import AdversarialWeightPerturbation, perturbed
from adr_scale.config import RunConfig, from_dict, to_dict, validate
from adr_scale.data import (
    ArrayDataset,
    DatasetInfo,
    Splits,
    augment,
    eval_batches,
    load_splits,
    steps_per_epoch,
    to_float,
    train_batches,
)
from adr_scale.losses import trades_loss
from adr_scale.models import create_model
from adr_scale.rundir import RunDir
from adr_scale.schedules import cosine_anneal, learning_rate

CHECKPOINT_FORMAT = 1


@dataclass
class TrainState:
    """Everything that changes during training; `checkpoint_state` / `load_state` persist it."""

    cfg: RunConfig
    model: nn.Module  # the student (possibly compiled or wrapped in DDP)
    ema: EMATeacher  # the ADR teacher, and the WA model
    optimizer: torch.optim.Optimizer
    awp: AdversarialWeightPerturbation | None
    device: torch.device
    steps_per_epoch: int
    total_steps: int
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    best_epoch: int = 0
    best_robust_acc: float = -1.0

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: RunConfig, info: DatasetInfo) -> nn.Module:
    return create_model(cfg.model.arch, info.num_classes, cfg.model.activation,
                        in_channels=info.in_channels, mean=info.mean, std=info.std)


def build_state(cfg: RunConfig, info: DatasetInfo, n_train: int, device: torch.device,
                wrap: Callable[[nn.Module], nn.Module] | None = None) -> TrainState:
    """Seeded model, EMA teacher, optimizer and AWP. `wrap` (e.g. DDP) is applied to the student."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, info).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ema = EMATeacher(model, cfg.adr.ema_decay)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
                                weight_decay=cfg.optim.weight_decay)
    awp = (AdversarialWeightPerturbation(model, cfg.awp.gamma, cfg.awp.proxy_lr)
           if cfg.awp.enabled else None)
    if wrap is not None:
        model = wrap(model)
    if cfg.train.compile:
        model = torch.compile(model)
    spe = steps_per_epoch(n_train, cfg.train.batch_size)
    total = cfg.train.epochs * spe
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    return TrainState(cfg=cfg, model=model, ema=ema, optimizer=optimizer, awp=awp, device=device,
                      steps_per_epoch=spe, total_steps=total)


def schedule_values(state: TrainState) -> tuple[float, float, float]:
    """(lr, tau, lambda) at the current step; tau falls and lambda rises per iteration (Sec. 4.2)."""
    cfg, step, total = state.cfg, state.step, state.total_steps
    warmup = round(cfg.optim.warmup_epochs * state.steps_per_epoch)
    lr = learning_rate(cfg.optim.schedule, cfg.optim.lr, step, total, warmup)
    tau = cosine_anneal(cfg.adr.tau_start, cfg.adr.tau_end, step, total)
    lam = cosine_anneal(cfg.adr.lambda_start, cfg.adr.lambda_end, step, total)
    return lr, tau, lam


def autocast(state: TrainState) -> contextlib.AbstractContextManager:
    enabled = state.cfg.train.precision == "bf16" and state.device.type == "cuda"
    return torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=enabled)


def _objective(state: TrainState, x: torch.Tensor, target: torch.Tensor,
               ) -> Callable[[nn.Module], torch.Tensor]:
    """Build the adversarial batch for the configured method; return loss(module) on it."""
    cfg, model = state.cfg, state.model
    if cfg.train.method == "standard":
        return lambda m: soft_cross_entropy(m(x), target)
    if cfg.train.method == "trades":
        # Zhang et al.: the KL attack runs in eval mode from x + 0.001 N(0, I) against p(x).
        model.eval()
        with torch.no_grad():
            p_nat = F.softmax(model(x).float(), dim=1)  # (B, C)
        x_adv = pgd_linf(model, x, p_nat, eps=cfg.attack.eps, alpha=cfg.attack.alpha,
                         steps=cfg.attack.steps, random_start="normal")
        model.train()
        beta = cfg.train.trades_beta
        return lambda m: trades_loss(m(x), m(x_adv), target, beta)
    # PGD-AT: the attack runs in train mode, as in Madry et al., Rice et al. and the official ADR
    # code (BatchNorm uses the batch's statistics while the attack is crafted).
    x_adv = pgd_linf(model, x, target, eps=cfg.attack.eps, alpha=cfg.attack.alpha,
                     steps=cfg.attack.steps)
    return lambda m: soft_cross_entropy(m(x_adv), target)


def train_step(state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One optimizer step on a uint8 batch; returns the (detached, on-device) training loss."""
    cfg = state.cfg
    lr, tau, lam = schedule_values(state)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    x = augment(to_float(images), cfg.data.crop_padding, cfg.data.flip)  # (B, C, H, W) in [0, 1]
    if cfg.train.channels_last and state.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    state.model.train()
    with autocast(state):
        target: torch.Tensor = labels  # (B,)
        if cfg.adr.enabled:
            with torch.no_grad():  # teacher on the clean augmented batch, before the attack
                target = rectify_labels(state.ema(x), labels, tau, lam)  # (B, C)
        loss_fn = _objective(state, x, target)
        state.optimizer.zero_grad(set_to_none=True)
        awp_on = state.awp is not None and state.step >= cfg.awp.warmup_epochs * state.steps_per_epoch
        if awp_on:
            diff = state.awp.compute(state.model, loss_fn)
            with perturbed(state.model, diff):
                loss = loss_fn(state.model)
                loss.backward()  # gradient at the perturbed weights, applied to the originals
        else:
            loss = loss_fn(state.model)
            loss.backward()
    state.optimizer.step()
    state.ema.update(state.model)
    state.step += 1
    return loss.detach()


@torch.no_grad()
def _count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x).argmax(dim=1) == y).sum()


def evaluate(model: nn.Module, data: ArrayDataset, *, eps: float, alpha: float, steps: int,
             batch_size: int, device: torch.device,
             amp: contextlib.AbstractContextManager | None = None) -> dict[str, float]:
    """Clean and PGD-`steps` accuracy of `model` (eval mode) on `data`; one host sync at the end."""
    was_training = model.training
    model.eval()
    clean = torch.zeros((), dtype=torch.long, device=device)
    robust = torch.zeros((), dtype=torch.long, device=device)
    for images, labels in eval_batches(data, batch_size, device):
        x = to_float(images)
        with amp or contextlib.nullcontext():
            clean += _count_correct(model, x, labels)
            x_adv = pgd_linf(model, x, labels, eps=eps, alpha=alpha, steps=steps)
            robust += _count_correct(model, x_adv, labels)
    model.train(was_training)
    n = len(data)
    return {"clean_acc": clean.item() / n, "robust_acc": robust.item() / n}


def validate_models(state: TrainState, val: ArrayDataset) -> dict[str, float]:
    """Validation clean and PGD accuracy of the student and the EMA (WA) model."""
    a = state.cfg.attack
    kwargs = dict(eps=a.eps, alpha=a.alpha, steps=a.eval_steps, batch_size=state.cfg.train.batch_size,
                  device=state.device, amp=autocast(state))
    row = {}
    for name, model in (("student", state.model), ("ema", state.ema)):
        for key, value in evaluate(model, val, **kwargs).items():
            row[f"val_{key}_{name}"] = value
    selected = "ema" if state.cfg.train.wa else "student"
    row["val_clean_acc"] = row[f"val_clean_acc_{selected}"]
    row["val_robust_acc"] = row[f"val_robust_acc_{selected}"]
    return row


def train_epoch(state: TrainState, train: ArrayDataset, bar: tqdm | None = None,
                rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """Run the steps of epoch `state.epoch` (up to total_steps); return its training metrics."""
    cfg = state.cfg
    losses = []
    for images, labels in train_batches(train, cfg.train.batch_size, cfg.seed, state.epoch,
                                        state.device, rank=rank, world_size=world_size):
        if state.step >= state.total_steps:
            break
        losses.append(train_step(state, images, labels))
        if bar is not None:
            bar.update(1)
            if state.step % cfg.train.log_every == 0:  # the only host sync inside the epoch
                bar.set_postfix(loss=f"{losses[-1].item():.4f}", lr=f"{schedule_values(state)[0]:.4g}")
    lr, tau, lam = schedule_values(state)
    return {"train_loss": torch.stack(losses).mean().item() if losses else float("nan"),
            "steps_in_epoch": len(losses), "lr": lr, "tau": tau, "lambda": lam}


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_state(state: TrainState) -> dict[str, Any]:
    """Student, EMA, optimizer, schedule position, RNG states and the resolved config."""
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
        "rng": rng,
        "config": to_dict(state.cfg),
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state(state: TrainState, ckpt: dict[str, Any]) -> None:
    _unwrap(state.model).load_state_dict(ckpt["model"])
    state.ema.module.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.step, state.epoch = ckpt["step"], ckpt["epoch"]
    state.best_epoch, state.best_robust_acc = ckpt["best_epoch"], ckpt["best_robust_acc"]
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if "cuda" in ckpt["rng"] and state.device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], state.device)


def config_of(ckpt: dict[str, Any]) -> RunConfig:
    return validate(from_dict(ckpt["config"], source="checkpoint config"))


# ---------------------------------------------------------------------------------------------
# The loop


def fit(cfg: RunConfig, out: str | Path, *, until_epoch: int | None = None,
        progress: bool = True, splits: Splits | None = None) -> dict[str, Any]:
    """Train `cfg` into run directory `out`, resuming from its latest checkpoint if there is one.

    until_epoch stops after that many epochs (a later call continues). Returns summary.json's dict
    (empty when stopped early).
    """
    validate(cfg)
    splits = splits or load_splits(cfg.data)  # bad roots fail here, before anything is written
    device = resolve_device(cfg.train.device)
    run = RunDir(out)
    run.prepare(cfg)
    state = build_state(cfg, splits.info, len(splits.train), device)
    latest = run.latest_checkpoint()
    if latest is not None:
        load_state(state, load_checkpoint(latest))
    run.truncate_metrics(state.epoch)
    train = ArrayDataset(splits.train.images.to(device), splits.train.labels.to(device))
    stop = state.num_epochs if until_epoch is None else min(until_epoch, state.num_epochs)
    bar = tqdm(total=state.total_steps, initial=state.step, desc=f"train {Path(out).name}",
               unit="step", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    while state.epoch < stop:
        row = {"epoch": state.epoch + 1, **train_epoch(state, train, bar)}
        row |= validate_models(state, splits.val)
        row |= {"step": state.step, "seconds": round(time.perf_counter() - start, 3)}
        state.epoch += 1
        improved = row["val_robust_acc"] > state.best_robust_acc
        if improved:
            state.best_epoch, state.best_robust_acc = state.epoch, row["val_robust_acc"]
        run.append_metrics(row)  # before the checkpoint: a resume truncates rows it lacks
        ckpt = checkpoint_state(state)
        run.save_epoch(ckpt, state.epoch, cfg.train.keep_checkpoints)
        if improved:
            run.save(ckpt, "best.pt")
        bar.write(f"epoch {state.epoch}/{state.num_epochs}  loss {row['train_loss']:.4f}  "
                  f"val clean {row['val_clean_acc']:.4f}  val PGD-{cfg.attack.eval_steps} "
                  f"{row['val_robust_acc']:.4f}")
        start = time.perf_counter()
    bar.close()
    if state.epoch < state.num_epochs:
        return {}
    run.save(checkpoint_state(state), "final.pt")
    summary = summarize(run.read_metrics(), cfg)
    run.write_summary(summary)
    return summary


def summarize(rows: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """Best (highest validation robust accuracy) and final epochs, as in the paper's Table 1."""
    best = max(rows, key=lambda r: (r["val_robust_acc"], -r["epoch"]))
    final = rows[-1]
    return {
        "selected_model": "ema" if cfg.train.wa else "student",
        "best_epoch": best["epoch"],
        "best_val_robust_acc": best["val_robust_acc"],
        "best_val_clean_acc": best["val_clean_acc"],
        "final_epoch": final["epoch"],
        "final_val_robust_acc": final["val_robust_acc"],
        "final_val_clean_acc": final["val_clean_acc"],
        "robust_overfitting_gap": best["val_robust_acc"] - final["val_robust_acc"],
        "steps": final["step"],
        "train_seconds": round(sum(r["seconds"] for r in rows), 1),
    }
