"""engine.build_state's train.sync_batchnorm on two CUDA ranks (gloo, spawned processes): every
BatchNorm is converted and normalises over both ranks' images inside batchnorm_sync only. A `gpu`
test (skips without CUDA; benchmarks/gpu_suite.sh runs it); the other CUDA-only branches are in
tests/unit/test_cuda_branches.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adr_scale.config import apply_overrides, get_preset
from adr_scale.data import load_splits
from adr_scale.engine import build_state, train_step


def _cfg(*overrides):
    return apply_overrides(get_preset("smoke"), ["train.device=cuda", *overrides])


def _sync_bn_rank(rank: int, init: str, out: str) -> None:
    """One of two gloo ranks on the same GPU (NCCL refuses two ranks on one device; PyTorch's
    SyncBatchNorm supports gloo): what build_state makes of train.sync_batchnorm, and one step."""
    from torch import nn

    from adr_scale.distributed import UpdateSyncBatchNorm, batchnorm_sync

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    cuda = torch.device("cuda")
    digits = load_splits(get_preset("smoke").data)
    cfg = _cfg("train.sync_batchnorm=true")
    on_cpu = build_state(apply_overrides(cfg, ["train.device=cpu"]), digits.info,
                         len(digits.train), torch.device("cpu"))
    state = build_state(cfg, digits.info, len(digits.train), cuda)
    plain = build_state(_cfg(), digits.info, len(digits.train), cuda)
    layer = next(m for m in state.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    # every rank's share of one global batch, drawn alike on both ranks
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 4, layer.num_features, 4, 4, generator=gen) * 3 + 1).to(cuda)
    layer.train()
    with batchnorm_sync(state.model):
        synced = layer(x[rank])
    local = layer(x[rank])
    ref = nn.functional.batch_norm(x.flatten(0, 1), None, None, layer.weight, layer.bias,
                                   training=True, eps=layer.eps)
    images, labels = digits.train.images[:64].to(cuda), digits.train.labels[:64].to(cuda)
    half = slice(rank * 32, (rank + 1) * 32)  # the rank's half of one global batch
    loss = train_step(state, images[half], labels[half])
    torch.save({
        "kinds": [type(m).__name__ for m in state.model.modules()],
        "cpu_kinds": [type(m).__name__ for m in on_cpu.model.modules()],
        "plain_kinds": [type(m).__name__ for m in plain.model.modules()],
        "n_update_sync": sum(isinstance(m, UpdateSyncBatchNorm) for m in state.model.modules()),
        "synced": synced.cpu(), "local": local.cpu(), "ref": ref[rank * 4:(rank + 1) * 4].cpu(),
        "local_ref": nn.functional.batch_norm(x[rank], None, None, layer.weight, layer.bias,
                                              training=True, eps=layer.eps).cpu(),
        "loss": float(loss), "params": [p.detach().cpu() for p in state.model.parameters()],
        "buffers": [b.cpu() for b in state.model.buffers()],
    }, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sync_batchnorm_on_two_cuda_ranks_normalises_over_both(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_sync_bn_rank, args=(init, str(tmp_path / "r")), nprocs=2,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"r.{i}") for i in range(2))
    for r in (r0, r1):
        bn = r["plain_kinds"].count("BatchNorm2d")
        assert bn > 0 and r["n_update_sync"] == bn  # every BatchNorm converted on CUDA ranks
        assert "BatchNorm2d" not in r["kinds"]
        assert r["cpu_kinds"] == r["plain_kinds"]  # not on a CPU device (no CPU kernel)
        # inside batchnorm_sync: statistics of both ranks' images; outside: the rank's own
        torch.testing.assert_close(r["synced"], r["ref"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(r["local"], r["local_ref"], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(r["synced"], r["local"], atol=1e-3)
    assert r0["loss"] == r0["loss"] and r1["loss"] == r1["loss"]  # finite: not NaN
    for a, b in zip(r0["params"] + r0["buffers"], r1["params"] + r1["buffers"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # one step keeps the ranks equal
