"""Checkpoints and validation off most epochs: train.checkpoint_every / val_every, and a run killed
between two checkpoints resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adr_scale.checkpoint import load_checkpoint
from adr_scale.config import apply_overrides, get_preset
from adr_scale.drivers import fit

EVERY_2 = ["train.device=cpu", "train.epochs=5", "train.checkpoint_every=2", "train.val_every=2",
           "attack.eval_steps=2", "data.val_size=100"]

# A real process death at step 60 (epoch 4 of 18-step epochs): after the checkpoint of epoch 2,
# with no checkpoint at epoch 3 (not validated, so not an improvement either).
KILLED = """
import os, sys
import adr_scale.engine as engine
from adr_scale.config import apply_overrides, get_preset
from adr_scale.drivers import fit
step = engine.train_step
def dying_step(state, images, labels):
    if state.step == 60:
        os._exit(3)
    return step(state, images, labels)
engine.train_step = dying_step
fit(apply_overrides(get_preset("smoke"), sys.argv[2:]), sys.argv[1], progress=False)
"""


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _no_time(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("every2") / "run"
    return out, fit(apply_overrides(get_preset("smoke"), EVERY_2), out, progress=False)


def test_checkpoints_and_validation_follow_their_intervals(uninterrupted):
    out, summary = uninterrupted
    rows = _rows(out)
    assert [("val_robust_acc" in r) for r in rows] == [False, True, False, True, True]  # + last
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0004.pt",
                                                                        "epoch-0005.pt"]
    assert summary["final_epoch"] == 5 and summary["best_epoch"] in (2, 4, 5)
    assert load_checkpoint(out / "best.pt")["epoch"] == summary["best_epoch"]


def test_a_run_killed_between_checkpoints_resumes_exactly(uninterrupted, tmp_path):
    out, _ = uninterrupted
    cut = tmp_path / "cut"
    killed = subprocess.run([sys.executable, "-c", KILLED, str(cut), *EVERY_2],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 3, killed.stderr[-2000:]
    assert [p.name for p in (cut / "checkpoints").iterdir()] == ["epoch-0002.pt"]
    fit(apply_overrides(get_preset("smoke"), EVERY_2), cut, progress=False)  # epochs 3-5 again
    assert _no_time(_rows(cut)) == _no_time(_rows(out))
    a, b = load_checkpoint(out / "final.pt"), load_checkpoint(cut / "final.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
