"""The smoke search end to end on a local Ray: ASHA stops trials, a killed driver resumes without
losing a finished trial, and best.yaml trains."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from adr_scale.config import load_yaml
from adr_scale.train import main as train_main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _space(tmp_path):
    raw = yaml.safe_load(open("search_spaces/smoke.yaml"))
    raw["budget"] = {"epochs": 3}
    raw["params"]["optim.lr"] = {"distribution": "loguniform", "low": 1e-4, "high": 0.2}
    raw["warm_start"]["optim.lr"] = 0.1  # the warm start trains well; tiny rates do not
    raw |= {"num_samples": 3, "max_concurrent": 1}  # sequential: ASHA's cuts are deterministic
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _complete_trials(out):
    import optuna

    try:
        study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{out / 'optuna.db'}")
    except Exception:  # the study is created by the driver a few seconds in
        return []
    return [t for t in study.trials if t.state.name == "COMPLETE"]


@pytest.mark.timeout(600)
def test_search_stops_resumes_and_exports_a_trainable_best(tmp_path):
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "adr_scale.tune", "--space", str(_space(tmp_path)), "--out",
           str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not _complete_trials(out):
        time.sleep(1)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
    first.wait()
    finished_before = {t.number: (t.params, t.values) for t in _complete_trials(out)}
    assert finished_before, "no trial finished before the kill"

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming the search" in done.stdout + done.stderr
    after = {t.number: (t.params, t.values) for t in _complete_trials(out)}
    for number, record in finished_before.items():
        assert after[number] == record  # a finished trial is kept, not rerun
    table = pq.read_table(out / "results.parquet").to_pylist()
    trials = {r["trial_id"] for r in table}
    assert len(trials) == 3
    epochs = {t: max(r["epoch"] for r in table if r["trial_id"] == t) for t in trials}
    stopped = [t for t, e in epochs.items() if e < 3]
    assert stopped, f"ASHA stopped nothing: {epochs}"
    assert sum(epochs.values()) < 3 * 3
    assert all(r["status"] == ("stopped early" if r["trial_id"] in stopped else "completed")
               for r in table)

    best = load_yaml(out / "best.yaml")
    assert best.train.epochs == 15  # full length, not the 3-epoch search fidelity
    best_row = max(table, key=lambda r: (r["epoch"] == epochs[r["trial_id"]], r["val_robust_acc"]))
    assert best.adr.tau_start == pytest.approx(best_row["adr.tau_start"])
    assert best.optim.lr == pytest.approx(best_row["optim.lr"])
    report = (out / "report.md").read_text()
    assert "stopped early by ASHA" in report and (out / "optimization_history.png").exists()
    rc = train_main(["--from-search", str(out), "--workers", "0", "--no-progress", "--set",
                     "train.max_steps=3", "--set", "train.device=cpu", "--out",
                     str(tmp_path / "long")])
    assert rc == 0
    assert (tmp_path / "long" / "final.pt").exists()


@pytest.mark.timeout(420)
def test_pbt_search_exports_a_learned_schedule_that_replays(tmp_path):
    raw = yaml.safe_load(open("search_spaces/smoke.yaml"))
    raw |= {"name": "smoke-pbt", "budget": {"epochs": 2}, "num_samples": 2, "max_concurrent": 2,
            "scheduler": {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5}}
    space = tmp_path / "pbt.yaml"
    space.write_text(yaml.safe_dump(raw))
    out = tmp_path / "pbt"
    done = subprocess.run([sys.executable, "-m", "adr_scale.tune", "--space", str(space),
                           "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted({(r["trial_id"], r["epoch"]) for r in table})[0][1] == 1
    assert {r["epoch"] for r in table} == {1, 2}  # two 1-epoch segments per trial
    best = load_yaml(out / "best.yaml")
    assert best.adr.segments.startswith("0:")  # the learned schedule, from the first segment on
    assert "PBT population" in (out / "report.md").read_text()
    rc = train_main(["--config", str(out / "best.yaml"), "--workers", "0", "--no-progress",
                     "--set", "train.max_steps=3", "--set", "train.device=cpu", "--out",
                     str(tmp_path / "replay")])
    assert rc == 0
