"""Data-parallel helpers on torch.distributed (set up by Ray Train's TorchTrainer, or by hand).

Why not DistributedDataParallel's wrapper: an adversarial step runs the model 11 or more times
(10 attack passes that need input gradients only, TRADES' two training passes, AWP's proxy and
perturbed passes), and DDP's reducer expects exactly one forward per backward with its hooks on
every parameter. We average the gradients once after the backward instead (one coalesced
all-reduce per step) and broadcast rank 0's BatchNorm buffers after the update, which is what
DDP does with broadcast_buffers=True. The attack passes then cost no communication at all, and
the step is a small share of eleven passes, so the lost overlap of backward and all-reduce is
cheap. With every rank holding identical weights and buffers, the EMA teacher is identical too.

The estimate behind "cheap": only the update pass's backward could overlap its all-reduce. A ring
all-reduce moves 2 (n - 1) / n of the gradient bytes per GPU: ResNet-18's 44.7 MB of fp32
gradients on 8 GPUs is ~78 MB, ~0.4 ms at ~200 GB/s inside an NVLink node and ~1.6 ms at ~50 GB/s
per GPU across p5 nodes (EFA, 3.2 Tb/s per node); WRN-34-10 (185 MB) ~6.5 ms across nodes. A
PGD-10 step is 11 forward+backward passes (~100 ms for ResNet-18 at 128 images per H100, ~600 ms
for WRN-34-10), so perfect overlap would save 0.4-1.6 % of a step, before DDP's own bucket costs.

AWP's proxy gradient goes through the same coalesced all-reduce, and `train.sync_batchnorm` uses
UpdateSyncBatchNorm, which synchronises only in the update pass (see below).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _coalesced(tensors: list[torch.Tensor], op) -> None:
    """Run `op` on one flat buffer per dtype and copy the result back (few large collectives)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors(group)
        op(flat)
        for t, synced in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            t.copy_(synced)


def average_gradients(model: nn.Module) -> None:
    """Mean of every parameter's gradient over the ranks (what DDP's reducer computes)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    grads = [p.grad for p in model.parameters() if p.grad is not None]

    def all_reduce_mean(flat: torch.Tensor) -> None:
        dist.all_reduce(flat)
        flat.div_(world)

    _coalesced(grads, all_reduce_mean)


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BatchNorm running statistics)."""
    if not is_distributed():
        return
    buffers = [b for b in model.buffers()]
    if buffers:
        _coalesced(buffers, lambda flat: dist.broadcast(flat, src))


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over the ranks (in place when distributed)."""
    if is_distributed():
        dist.all_reduce(values)
    return values


def gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class UpdateSyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm that synchronises only while `sync` is set: in the update pass (the gradient
    step), not in the ~10 attack passes of a PGD-AT step, which run in train mode too and would
    otherwise each pay one all-reduce per BatchNorm layer. The other passes use the rank's own
    batch statistics, as plain BatchNorm does."""

    sync = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sync:
            return super().forward(x)
        return nn.modules.batchnorm._BatchNorm.forward(self, x)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm as an UpdateSyncBatchNorm (weights and statistics kept)."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.SyncBatchNorm:
            module.__class__ = UpdateSyncBatchNorm
    return model


@contextlib.contextmanager
def batchnorm_sync(model: nn.Module) -> Iterator[None]:
    """Synchronise the UpdateSyncBatchNorm layers of `model` inside the block (no-op without)."""
    layers = [m for m in model.modules() if isinstance(m, UpdateSyncBatchNorm)]
    for m in layers:
        m.sync = True
    try:
        yield
    finally:
        for m in layers:
            m.sync = False


def rank_seed(seed: int, rank: int) -> int:
    return seed + 1_000_003 * rank
