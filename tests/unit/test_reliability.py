"""Issue 14: real faults (a NaN run, a torn checkpoint, a crafted pickle, a second process on the
same --out) end in one line and never in lost, mixed or non-finite results."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adr_scale import evaluate as ev
from adr_scale import train as train_cli
from adr_scale.config import ConfigError, apply_overrides, get_preset
from adr_scale.data import load_splits
from adr_scale.engine import build_state, checkpoint_state, fit, load_checkpoint, run_epochs
from adr_scale.runguard import LOCK_FILE, TrainingDiverged

# 1200 training images at batch 512: 2 steps per epoch, so a run of a few epochs takes ~1 s.
FAST = ["train.device=cpu", "train.batch_size=512", "data.val_size=300", "attack.eval_steps=2",
        "train.log_every=1"]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def digits(one_thread):
    return load_splits(get_preset("smoke").data)


def _cfg(*overrides):
    return apply_overrides(get_preset("smoke"), [*FAST, *overrides])


def _cli(out, *overrides, workers=0):
    args = ["--preset", "smoke", "--out", str(out), "--workers", str(workers), "--no-progress"]
    for item in [*FAST, *overrides]:
        args += ["--set", item]
    return train_cli.main(args)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


# -- item 1: a diverged run stops, saves nothing non-finite, and evaluate refuses NaN weights ------


def test_nan_run_stops_with_one_line_and_saves_nothing(digits, tmp_path, capsys):
    out = tmp_path / "nan"
    # 18 steps per epoch, checked every 2: the loss is NaN from step 6 of epoch 1 on
    assert _cli(out, "optim.lr=1e6", "train.batch_size=64", "train.log_every=2") == 1
    line = _error_line(capsys)
    assert "training diverged at step 6 (epoch 1): loss nan, lr 3.333e+05" in line
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "executor.json"]


def test_nonfinite_weights_after_a_finite_loss_are_never_saved(digits):
    cfg = _cfg("train.epochs=2")
    state = build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))
    weight = dict(state.model.named_parameters())["net.features.0.weight"]

    def poison_last_step(state):  # the last update of epoch 1 leaves an inf weight
        if state.step == state.steps_per_epoch:
            with torch.no_grad():
                weight[0, 0, 0, 0] = float("inf")

    state.after_step = poison_last_step
    saved = []
    with pytest.raises(TrainingDiverged, match=r"by step 2 \(epoch 1\): the student weights "
                                                r"'net.features.0.weight' are non-finite"):
        run_epochs(state, digits.train, digits.val, lambda *a: saved.append(a))
    assert saved == [] and state.epoch == 0


def test_evaluate_refuses_a_checkpoint_with_nan_weights(digits, tmp_path):
    state = build_state(_cfg(), digits.info, len(digits.train), torch.device("cpu"))
    ckpt = checkpoint_state(state)
    ckpt["ema"]["net.features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "final.pt")
    with pytest.raises(ConfigError, match=r"non-finite ema weights \(1 tensors with NaN or inf, "
                                          r"e.g. 'net.features.0.weight'\); the run diverged"):
        ev.load_model(tmp_path / "final.pt", "ema")
    assert ev.load_model(tmp_path / "final.pt", "student").which == "student"  # the other is fine
