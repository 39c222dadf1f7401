"""The coalesced gradient all-reduce on 2 real gloo ranks (torch.multiprocessing, no Ray): it equals
the per-tensor one, and AWP's averaged proxy gradient perturbs every rank alike."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adr_scale.awp import AdversarialWeightPerturbation
from adr_scale.distributed import average_gradients
from adr_scale.models import create_model


def _two_ranks(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    model = create_model("tiny", 10, in_channels=1)
    torch.manual_seed(1 + rank)  # different data on each rank
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    per_tensor = []
    for p in model.parameters():  # the reference: one all-reduce per tensor
        g = p.grad.clone()
        dist.all_reduce(g)
        per_tensor.append(g / 2)
    average_gradients(model)  # one flat buffer
    awp = AdversarialWeightPerturbation(model, gamma=0.005, proxy_lr=0.01)
    diff = awp.compute(model, lambda m: torch.nn.functional.cross_entropy(m(x), y))
    torch.save({"coalesced": [p.grad for p in model.parameters()], "per_tensor": per_tensor,
                "diff": diff}, f"{out}.{rank}")
    dist.barrier()  # both ranks done talking: gloo aborted (SIGABRT) when one tore down first
    dist.destroy_process_group()


def test_coalesced_all_reduce_equals_per_tensor_and_awp_perturbs_every_rank_alike(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_two_ranks, args=(init, str(tmp_path / "r")), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"r.{i}") for i in range(2))
    for rank in (r0, r1):
        for a, b in zip(rank["coalesced"], rank["per_tensor"], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert r0["diff"].keys() == r1["diff"].keys() and r0["diff"]
    for name in r0["diff"]:  # the proxy gradient was averaged: one perturbation for both ranks
        torch.testing.assert_close(r0["diff"][name], r1["diff"][name], rtol=0, atol=1e-7)
