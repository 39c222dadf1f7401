"""BatchNorm syncs only in the update pass (in-process; the coalesced all-reduce on 2 real gloo
ranks is tests/integration/test_distributed_ranks.py)."""

from __future__ import annotations

import pytest
import torch

from adr_scale.config import apply_overrides, get_preset
from adr_scale.data import load_splits, train_batches
from adr_scale.distributed import UpdateSyncBatchNorm, convert_sync_batchnorm
from adr_scale.engine import build_state, train_step


@pytest.fixture(scope="module")
def digits(one_thread):
    return load_splits(get_preset("smoke").data)


@pytest.mark.parametrize("awp", [False, True])
def test_sync_batchnorm_synchronises_only_the_update_pass(digits, awp):
    cfg = apply_overrides(get_preset("smoke"), ["train.device=cpu", "model.arch=resnet18",
                                                f"awp.enabled={str(awp).lower()}",
                                                "awp.warmup_epochs=0"])
    state = build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))
    state.model = convert_sync_batchnorm(state.model)  # build_state converts on GPUs only
    layers = [m for m in state.model.modules() if isinstance(m, UpdateSyncBatchNorm)]
    synced, local = [], []
    layers[0].register_forward_pre_hook(
        lambda m, _: (synced if m.sync else local).append(m.training))
    x, y = next(iter(train_batches(digits.train, 32, 0, 0, state.device)))
    train_step(state, x, y)
    assert synced == [True]  # one synchronised pass: the update (at the perturbed weights)
    # the attack's 10 train-mode passes and the teacher / AWP proxy run without collectives
    assert local.count(True) == cfg.attack.steps
    assert not any(m.sync for m in layers)
