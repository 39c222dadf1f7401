"""The training engine: one ADR training step, the epoch loop and validation. No Ray, no files:
`adr_scale.checkpoint` holds a checkpoint's state, `adr_scale.drivers` the run directory.

One step (Algorithm 1 of the paper): rectify the labels with the EMA teacher on the clean augmented
batch -> attack the student with the rectified label -> update the student (optionally at
adversarially perturbed weights, AWP) -> update the EMA teacher.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from adr_scale.adr import EMATeacher, _unwrap, rectify_labels
from adr_scale.attacks import pgd_linf, soft_cross_entropy
from adr_scale.awp import AdversarialWeightPerturbation, perturbed
from adr_scale.checkpoint import build_model, nonfinite_tensors, selected_network
from adr_scale.config import ConfigError, RunConfig
from adr_scale.data import (
    ArrayDataset,
    DatasetInfo,
    augment,
    eval_batches,
    steps_per_epoch,
    to_float,
)
from adr_scale.data.mixing import coverage_line, epoch_batches
from adr_scale.distributed import (
    all_sum,
    average_gradients,
    batchnorm_sync,
    broadcast_buffers,
    convert_sync_batchnorm,
    rank_and_world,
    rank_seed,
)
from adr_scale.losses import trades_loss
from adr_scale.models.layers import norm_parameters, set_bn_momentum
from adr_scale.run.lock import TrainingDiverged
from adr_scale.schedules import adr_schedule, learning_rate


@dataclass
class TrainState:
    """Everything that changes during training; `checkpoint.checkpoint_state` / `load_state`
    persist it."""

    cfg: RunConfig
    model: nn.Module  # the student (possibly compiled)
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
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    after_step: Callable[[TrainState], None] | None = None  # e.g. fault injection in tests

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} but this machine has no usable GPU; allowed "
                          "here: cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name!r} but this machine has "
                          f"{torch.cuda.device_count()} GPUs; allowed: cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}")
    return device


def build_state(cfg: RunConfig, info: DatasetInfo, n_train: int, device: torch.device,
                ) -> TrainState:
    """Seeded model, EMA teacher, optimizer and AWP; identical weights on every rank."""
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":  # fixed input shapes: let cuDNN pick its fastest kernels once
        torch.backends.cudnn.benchmark = True
    model = build_model(cfg, info)
    if cfg.train.sync_batchnorm and rank_and_world()[1] > 1 and device.type == "cuda":
        model = convert_sync_batchnorm(model)  # PyTorch syncs BatchNorm on GPUs only
    set_bn_momentum(model, cfg.model.bn_momentum)  # a first-step value is set by adversarial_batch_loss
    model = model.to(device)
    if cfg.train.channels_last:  # NHWC: faster convolutions on tensor cores; also runs on CPU
        model = model.to(memory_format=torch.channels_last)
    ema = EMATeacher(model, cfg.adr.ema_decay, warmup=cfg.adr.ema_warmup)
    params: Any = model.parameters()
    if cfg.optim.no_decay_norm_bias:  # official code / Wang et al. with DDPM data
        norms = norm_parameters(model)
        exempt = {id(p) for p in norms}
        params = [{"params": [p for p in model.parameters() if id(p) not in exempt]},
                  {"params": norms, "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
                                weight_decay=cfg.optim.weight_decay)
    awp = (AdversarialWeightPerturbation(model, cfg.awp.gamma, cfg.awp.proxy_lr)
           if cfg.awp.enabled else None)
    if cfg.train.compile:  # graphs are cached per train/eval mode and frozen/unfrozen parameters
        model = torch.compile(model, backend=cfg.train.compile_backend)
    spe, total = schedule_length(cfg, n_train)
    rank, _ = rank_and_world()
    if rank > 0:  # rank 0 keeps the single-process stream; other ranks draw their own noise
        torch.manual_seed(rank_seed(cfg.seed, rank))
    return TrainState(cfg=cfg, model=model, ema=ema, optimizer=optimizer, awp=awp, device=device,
                      steps_per_epoch=spe, total_steps=total)


def schedule_length(cfg: RunConfig, n_train: int) -> tuple[int, int]:
    """(steps per epoch, total steps). With synthetic data one "CIFAR-equivalent epoch" is
    ceil(N_real / global batch) steps (Gowal et al., Wang et al.); without, the full batches of
    one pass over the real images. train.max_steps caps the total (schedules span the cap)."""
    spe = (math.ceil(n_train / cfg.train.batch_size) if cfg.data.synthetic
           else steps_per_epoch(n_train, cfg.train.batch_size))
    total = cfg.train.epochs * spe
    return spe, total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)


def schedule_values(state: TrainState) -> tuple[float, float, float]:
    """(lr, tau, lambda) at the current step; tau falls and lambda rises per iteration (Sec. 4.2)."""
    cfg, step, total = state.cfg, state.step, state.total_steps
    warmup = round(cfg.optim.warmup_epochs * state.steps_per_epoch)
    lr = learning_rate(cfg.optim.schedule, cfg.optim.lr, step, total, warmup)
    tau, lam = adr_schedule(cfg.adr, step, total)
    return lr, tau, lam


def autocast(state: TrainState) -> contextlib.AbstractContextManager:
    """bf16 autocast on the run's device (CUDA; on the CPU too, so tests cover it)."""
    enabled = state.cfg.train.precision == "bf16"
    return torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=enabled)


def adversarial_batch_loss(state: TrainState, x: torch.Tensor, target: torch.Tensor,
                           ) -> Callable[[nn.Module], torch.Tensor]:
    """Build the adversarial batch for the configured method; return loss(module) on it."""
    cfg, model = state.cfg, state.model
    step0 = cfg.model.bn_momentum_step0
    if step0 is not None and state.step <= 1:  # every train-mode forward of step 0 uses step0
        set_bn_momentum(_unwrap(model), step0 if state.step == 0 else cfg.model.bn_momentum)
    if cfg.train.method == "standard":
        return lambda m: soft_cross_entropy(m(x), target)
    if cfg.train.method == "trades":
        return trades_adversarial_batch_loss(cfg, model, x, target)
    # PGD-AT: the attack runs in train mode, as in Madry et al., Rice et al. and the official ADR
    # code (BatchNorm uses the batch's statistics while the attack is crafted).
    x_adv = pgd_linf(model, x, target, eps=cfg.attack.eps, alpha=cfg.attack.alpha,
                     steps=cfg.attack.steps)
    return lambda m: soft_cross_entropy(m(x_adv), target)


def trades_adversarial_batch_loss(cfg: RunConfig, model: nn.Module, x: torch.Tensor,
                                  target: torch.Tensor) -> Callable[[nn.Module], torch.Tensor]:
    """TRADES' KL attack against p(x), then loss(m) = CE(m(x), target) + beta KL(m(x) || m(x_adv)).

    official (yuyuwu5/ADR): attack in train mode (batch statistics, running statistics updated)
    from x + 0.001 U[0, 1), and the loss from one forward of the concatenated clean + adversarial
    batch, so BatchNorm normalises both halves together. zhang (Zhang et al. 2019): attack in
    eval mode from x + 0.001 N(0, I), separate clean and adversarial forwards.
    """
    official = cfg.train.trades_attack == "official"
    if not official:
        model.eval()
    with torch.no_grad():
        p_nat = F.softmax(model(x).float(), dim=1)  # (B, C)
    x_adv = pgd_linf(model, x, p_nat, eps=cfg.attack.eps, alpha=cfg.attack.alpha,
                     steps=cfg.attack.steps, random_start="small_uniform" if official else "normal")
    model.train()
    beta, n = cfg.train.trades_beta, x.shape[0]
    if official:
        def loss(m: nn.Module) -> torch.Tensor:
            logits = m(torch.cat([x, x_adv]))  # (2B, C)
            return trades_loss(logits[:n], logits[n:], target, beta)

        return loss
    return lambda m: trades_loss(m(x), m(x_adv), target, beta)


def train_step(state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One optimizer step on a uint8 batch; returns the (detached, on-device) training loss."""
    cfg = state.cfg
    lr, tau, lam = schedule_values(state)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    x = augment(to_float(images), cfg.data.crop_padding, cfg.data.flip)  # (B, C, H, W) in [0, 1]
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    state.model.train()
    with autocast(state):
        target: torch.Tensor = labels  # (B,)
        if cfg.adr.enabled:
            with torch.no_grad():  # teacher on the clean augmented batch, before the attack
                target = rectify_labels(state.ema(x), labels, tau, lam)  # (B, C)
        loss_fn = adversarial_batch_loss(state, x, target)
        state.optimizer.zero_grad(set_to_none=True)
        awp_on = state.awp is not None and state.step >= cfg.awp.warmup_epochs * state.steps_per_epoch
        if awp_on:
            diff = state.awp.compute(state.model, loss_fn)
            with perturbed(state.model, diff), batchnorm_sync(state.model):
                loss = loss_fn(state.model)
                loss.backward()  # gradient at the perturbed weights, applied to the originals
        else:
            with batchnorm_sync(state.model):  # train.sync_batchnorm: this pass only
                loss = loss_fn(state.model)
            loss.backward()
    average_gradients(state.model)  # no-op in one process
    state.optimizer.step()
    broadcast_buffers(_unwrap(state.model))  # every rank keeps rank 0's BN statistics
    state.ema.update(state.model, state.step)
    state.step += 1
    return loss.detach()


@torch.no_grad()
def _count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x).argmax(dim=1) == y).sum()


def validation_accuracy(model: nn.Module, data: ArrayDataset, *, eps: float, alpha: float,
                        steps: int, batch_size: int, device: torch.device,
                        amp: contextlib.AbstractContextManager | None = None) -> dict[str, float]:
    """Clean and PGD-`steps` accuracy of `model` (eval mode) on `data`; one host sync at the end.

    Under torch.distributed each rank attacks its contiguous share of the images and the counts
    are summed.
    """
    was_training = model.training
    model.eval()
    rank, world = rank_and_world()
    share = -(-len(data) // world)
    part = slice(rank * share, (rank + 1) * share)
    shard = ArrayDataset(data.images[part], data.labels[part])
    counts = torch.zeros(2, dtype=torch.long, device=device)  # (clean, robust) correct
    for images, labels in eval_batches(shard, batch_size, device):
        x = to_float(images)
        with amp or contextlib.nullcontext():
            counts[0] += _count_correct(model, x, labels)
            x_adv = pgd_linf(model, x, labels, eps=eps, alpha=alpha, steps=steps)
            counts[1] += _count_correct(model, x_adv, labels)
    model.train(was_training)
    clean, robust = all_sum(counts).tolist()
    return {"clean_acc": clean / len(data), "robust_acc": robust / len(data)}


def validate_models(state: TrainState, val: ArrayDataset) -> dict[str, float]:
    """Validation clean and PGD accuracy of the student and the EMA (WA) model."""
    a = state.cfg.attack
    kwargs = dict(eps=a.eps, alpha=a.alpha, steps=a.eval_steps, batch_size=state.cfg.train.batch_size,
                  device=state.device, amp=autocast(state))
    row = {}
    # The attack's random starts come from a stream of their own, so the validation set's size
    # or attack never changes the training trajectory (and runs that differ only there pair up).
    rank, _ = rank_and_world()
    with torch.random.fork_rng(devices=[state.device] if state.device.type == "cuda" else []):
        torch.manual_seed(rank_seed(state.cfg.seed, rank) + 104_729 * (state.epoch + 1))
        for name, model in (("student", _unwrap(state.model)), ("ema", state.ema)):
            for key, value in validation_accuracy(model, val, **kwargs).items():
                row[f"val_{key}_{name}"] = value
    selected = selected_network(state.cfg)
    row["val_clean_acc"] = row[f"val_clean_acc_{selected}"]
    row["val_robust_acc"] = row[f"val_robust_acc_{selected}"]
    return row


def check_finite(state: TrainState, losses: list[torch.Tensor], first: int) -> None:
    """Stop at a non-finite loss among losses[first:] (this epoch's, on the device).

    One host sync per call, so the loop calls it every train.log_every steps and at the epoch
    end rather than per step. The flag is summed over the ranks: every rank stops at the same
    check instead of the others hanging in the next gradient all-reduce.
    """
    window = losses[max(first, 0):]
    if not window:
        return
    bad = ~torch.isfinite(torch.stack(window).float())  # (n,)
    if all_sum(bad.any().to(torch.int64)).item() == 0:
        return
    at = max(first, 0) + (int(bad.nonzero()[0]) if bad.any() else 0)  # first bad loss here
    step = state.step - len(losses) + at  # 0-based index of the optimizer step that made it
    lr = learning_rate(state.cfg.optim.schedule, state.cfg.optim.lr, step, state.total_steps,
                       round(state.cfg.optim.warmup_epochs * state.steps_per_epoch))
    loss = losses[at].item() if bad.any() else "non-finite on another rank"
    raise TrainingDiverged(
        f"training diverged at step {step + 1} (epoch {state.epoch + 1}): loss {loss}, "
        f"lr {lr:.4g}; nothing non-finite was saved; lower optim.lr (or raise "
        "optim.warmup_epochs) and rerun")


def check_weights_finite(state: TrainState) -> None:
    """A last update can turn the weights non-finite after a finite loss: never save those."""
    for label, module in (("student", _unwrap(state.model)), ("EMA", state.ema.module)):
        bad = nonfinite_tensors(module.state_dict())
        if bad:
            raise TrainingDiverged(
                f"training diverged by step {state.step} (epoch {state.epoch + 1}): the {label} "
                f"weights {bad[0]!r} are non-finite; nothing non-finite was saved; lower "
                "optim.lr and rerun")


def train_epoch(state: TrainState, train: ArrayDataset, bar: tqdm | None = None,
                rank: int = 0, world_size: int = 1, synthetic=None) -> dict[str, float]:
    """Run the steps of epoch `state.epoch` (up to total_steps); return its training metrics."""
    cfg = state.cfg
    losses = []
    first_step = state.step
    start = time.perf_counter()
    for images, labels in epoch_batches(state, train, synthetic, rank, world_size):
        if state.step >= state.total_steps:
            break
        losses.append(train_step(state, images, labels))
        if state.after_step is not None:
            state.after_step(state)
        if state.step % cfg.train.log_every == 0:  # the only host sync inside the epoch
            check_finite(state, losses, len(losses) - cfg.train.log_every)
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1].item():.4f}", lr=f"{schedule_values(state)[0]:.4g}")
        if bar is not None:
            bar.update(1)
    check_finite(state, losses, len(losses) - state.step % cfg.train.log_every)
    lr, tau, lam = schedule_values(state)
    loss = torch.stack(losses).mean().item() if losses else float("nan")  # syncs the device
    seconds = time.perf_counter() - start
    row = {"train_loss": loss, "steps_in_epoch": len(losses), "lr": lr, "tau": tau, "lambda": lam,
           "samples_per_s": round(len(losses) * cfg.train.batch_size / seconds, 1)}
    if losses:  # the values this epoch's first and last steps used (a PBT replay is checked on them)
        for key, at in (("first", first_step), ("last", state.step - 1)):
            row[f"tau_{key}"], row[f"lambda_{key}"] = adr_schedule(cfg.adr, at, state.total_steps)
    if synthetic is not None:  # global counts, every rank alike
        n_synth = round(cfg.data.synthetic_fraction * cfg.train.batch_size)
        row |= {"samples_real": len(losses) * (cfg.train.batch_size - n_synth),
                "samples_synthetic": len(losses) * n_synth,
                "synthetic_images": len(synthetic.synth),
                "synthetic_distinct_seen": synthetic.distinct_seen,  # this rank's draws (Ray keeps rank 0's)
                "synthetic_bad_shards": len(synthetic.synth.bad_shards)}
    return row


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True, kw_only=True)
class EpochEnd:
    """What `run_epochs` hands its hook after an epoch."""

    row: dict[str, Any]  # the epoch's metrics; val_* only when it was validated
    improved: bool  # a new best validation robust accuracy: best.pt (implies `save`)
    save: bool  # a checkpoint is due


EpochHook = Callable[[TrainState, EpochEnd], None]


def run_epochs(state: TrainState, train: ArrayDataset, val: ArrayDataset, on_epoch_end: EpochHook,
               *, until_epoch: int | None = None, bar: tqdm | None = None,
               synthetic=None) -> None:
    """Train epoch by epoch from `state.epoch`; after each, call on_epoch_end(state, EpochEnd):
    its `save` asks for a checkpoint (and `improved` for best.pt, which implies one). Only
    validated epochs' rows carry val_* metrics.

    Validation every train.val_every epochs and checkpoints every train.checkpoint_every epochs
    (at least train.checkpoint_minutes apart) keep both off most epochs of a long run; the last
    epoch (or until_epoch, where a later call continues) always validates and saves. Every rank
    takes the same decisions (the minutes by rank 0's clock), since both are collectives.
    The same loop runs in-process (`drivers.fit`) and on every Ray Train worker
    (`adr_scale.ray_adapter`).
    """
    rank, world = rank_and_world()
    t = state.cfg.train
    stop = state.num_epochs if until_epoch is None else min(until_epoch, state.num_epochs)
    if synthetic is not None and rank == 0 and state.epoch < stop:
        (bar.write if bar is not None else print)(coverage_line(state, synthetic))
    last_save = time.monotonic()
    while state.epoch < stop:
        start = time.perf_counter()
        row = {"epoch": state.epoch + 1, **train_epoch(state, train, bar, rank, world, synthetic)}
        check_weights_finite(state)  # before validation, best.pt and final.pt
        last = state.epoch + 1 == stop
        due = (state.epoch + 1) % t.checkpoint_every == 0 and _rank0_says(
            state, time.monotonic() - last_save >= 60 * t.checkpoint_minutes)
        validated = last or due or (state.epoch + 1) % t.val_every == 0
        if validated:
            row |= validate_models(state, val)
        row |= {"step": state.step, "seconds": round(time.perf_counter() - start, 3)}
        state.epoch += 1
        improved = validated and row["val_robust_acc"] > state.best_robust_acc
        if improved:
            state.best_epoch, state.best_robust_acc = state.epoch, row["val_robust_acc"]
        state.history.append(row)
        save = last or due or improved
        on_epoch_end(state, EpochEnd(row=row, improved=improved, save=save))
        if save:
            last_save = time.monotonic()


def _rank0_says(state: TrainState, flag: bool) -> bool:
    """Rank 0's value of `flag` on every rank (one tiny all-reduce; nothing in one process)."""
    rank, world = rank_and_world()
    if world == 1:
        return flag
    value = torch.tensor(int(flag and rank == 0), device=state.device)
    return bool(all_sum(value).item())


def epoch_line(state: TrainState, row: dict[str, Any]) -> str:
    return (f"epoch {row['epoch']}/{state.num_epochs}  loss {row['train_loss']:.4f}  "
            f"val clean {row['val_clean_acc']:.4f}  val PGD-{state.cfg.attack.eval_steps} "
            f"{row['val_robust_acc']:.4f}")
