"""PBT on a local Ray: a trial exploits the other's checkpoint and the learned schedule replays
step by step (its own module, so xdist can run it beside the halving test)."""

import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from adr_scale.config import load_yaml
from adr_scale.schedules import adr_schedule
from adr_scale.train import main as train_main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _last_tune_checkpoints(experiment: Path) -> dict[str, tuple[dict, list[dict]]]:
    """{trial id: (segments.json, history.json)} of every PBT trial's latest Tune checkpoint."""
    out = {}
    for trial_dir in sorted(p for p in experiment.iterdir() if p.is_dir()):
        ckpts = sorted(trial_dir.glob("checkpoint_*"))
        if ckpts:
            seg = json.loads((ckpts[-1] / "segments.json").read_text())
            out[seg["lineage"][-1]["trial"]] = (seg, json.loads(
                (ckpts[-1] / "history.json").read_text()))
    return out


def _assert_replays(adr, rows, total_steps):
    """The schedule `adr` gives the tau / lambda each epoch's first and last step trained with."""
    for r in rows:
        first, last = r["step"] - r["steps_in_epoch"], r["step"] - 1
        for key, step in (("first", first), ("last", last)):
            tau, lam = adr_schedule(adr, step, total_steps)
            assert (tau, lam) == (pytest.approx(r[f"tau_{key}"], abs=1e-9),
                                  pytest.approx(r[f"lambda_{key}"], abs=1e-9)), (r["epoch"], key)


@pytest.mark.timeout(900)
def test_pbt_exploits_and_best_yaml_replays_the_winners_schedule(tmp_path):
    """Two trials, the references, ranked synchronously after every epoch with quantile 0.5: at
    each perturbation both have reached the same epoch, so unless they tie the worse one takes the
    better one's checkpoint. (Asynchronously, each report is ranked against the other trial's last
    one; on a rising curve the trial reporting later, an epoch ahead, can win every comparison,
    and a trial that finishes drops out of the ranking: CI saw a 3-epoch run with no exploit.)"""
    from adr_scale.config import Segment, with_values

    raw = yaml.safe_load(open("tests/assets/ci_space.yaml"))
    raw |= {"name": "smoke-pbt", "budget": {"epochs": 2}, "num_samples": 2, "max_concurrent": 2,
            "references": False,  # a population of two sampled points: the exploit is under test
            "confirm": {"top_k": 0}, "long_run": {"train.epochs": 2},  # replay at the same steps
            "scheduler": {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                          "synch": True}}
    space = tmp_path / "pbt.yaml"
    space.write_text(yaml.safe_dump(raw))
    out = tmp_path / "pbt"
    done = subprocess.run([sys.executable, "-m", "adr_scale.tune", "--space", str(space),
                           "--out", str(out)], capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["epoch"] for r in table} == {1, 2}
    trials = _last_tune_checkpoints(out / "ray" / "smoke-pbt")
    assert len(trials) == 2
    # An exploit: a trial's state was trained, up to some epoch, by the other trial's runs.
    exploited = {t: seg for t, (seg, _) in trials.items()
                 if any(e["trial"] != t for e in seg["lineage"])}
    assert exploited, {t: seg["lineage"] for t, (seg, _) in trials.items()}
    for trial, seg in exploited.items():
        donor = next(e["trial"] for e in seg["lineage"] if e["trial"] != trial)
        assert donor in trials and donor != trial
        assert (out / "ray" / "smoke-pbt" / f"pbt_policy_{trial}.txt").exists()  # Tune's record
        spans = [(e["from"], e["until"]) for e in seg["lineage"]]
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in pairwise(spans))
        assert spans[-1][1] == 2
    # Every trial's learned schedule replays what it trained with, exploited or not.
    base = load_yaml(out / "best.yaml")
    for seg, rows in trials.values():
        assert [r["epoch"] for r in rows] == [1, 2]
        adr = with_values(base, {"adr.segments": seg["segments"]}).adr  # validated
        _assert_replays(adr, rows, rows[-1]["step"])
    # best.yaml (the winner's config at full length) replays the winner's tau / lambda step by step.
    winner = (out / "best.yaml").read_text().split("trial ", 1)[1].split(",")[0]
    assert winner in trials
    seg, rows = trials[winner]
    assert base.adr.segments[0].start == 0.0
    assert base.adr.segments == tuple(Segment(*s) for s in seg["segments"])  # every digit
    _assert_replays(base.adr, rows, rows[-1]["step"])
    assert "PBT population" in (out / "report.md").read_text()
    rc = train_main(["--config", str(out / "best.yaml"), "--workers", "0", "--no-progress",
                     "--set", "train.max_steps=3", "--set", "train.device=cpu", "--out",
                     str(tmp_path / "replay")])
    assert rc == 0
