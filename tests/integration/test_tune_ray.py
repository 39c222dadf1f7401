"""The smoke search end to end on a local Ray: ASHA stops trials and best.yaml trains (a killed
driver's resume: test_tune_resume.py)."""

import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from adr_scale.config import load_yaml
from adr_scale.train import main as train_main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _space(tmp_path, *, epochs, samples, lr=False, confirm=None, long_epochs=15):
    raw = yaml.safe_load(open("tests/assets/ci_space.yaml"))
    raw["budget"] = {"epochs": epochs}
    raw["confirm"] = confirm or {"top_k": 0}  # the confirmation stage only where it is tested
    raw["long_run"] = {"train.epochs": long_epochs}
    if lr:  # the warm start trains well; tiny learning rates do not, so ASHA has work to do
        raw["params"]["optim.lr"] = {"distribution": "loguniform", "low": 1e-4, "high": 0.2}
        raw["warm_start"]["optim.lr"] = 0.1
    raw |= {"num_samples": samples, "max_concurrent": 1}  # sequential: ASHA's cuts are repeatable
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _search(tmp_path, space, out):
    return subprocess.run([sys.executable, "-m", "adr_scale.tune", "--space", str(space),
                           "--out", str(out)], capture_output=True, text=True, timeout=400)


@pytest.mark.timeout(600)
def test_asha_stops_weak_trials_confirms_and_best_yaml_trains(tmp_path):
    """References (run to the budget) and ASHA in the search (3 trials of 2 epochs), then the
    confirmation stage, a race (top 1 + the paper's schedule + AT, 2 to 3 seeds, 1 full-length
    epoch): best.yaml is the race's winner, and the runs trained are the ones the race's
    bookkeeping names. Nine to eleven TorchTrainer.fit calls in all, each mostly Ray start-up:
    the epochs are kept short and the validation attack cheap (PGD-3)."""
    out = tmp_path / "search"
    space = _space(tmp_path, epochs=2, samples=3, lr=True, long_epochs=1,
                   confirm={"top_k": 1, "min_seeds": 2, "seeds": 3, "max_concurrent": 2})
    raw = yaml.safe_load(space.read_text())
    raw["fixed"]["attack.eval_steps"] = 3  # in every trial, confirmation run and best.yaml
    space.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "adr_scale.tune", "--space", str(space),
                           "--out", str(out)], capture_output=True, text=True, timeout=560)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(out / "results.parquet").to_pylist()
    epochs: dict[str, int] = {}
    for r in table:
        epochs[r["trial_id"]] = max(epochs.get(r["trial_id"], 0), r["epoch"])
    assert len(epochs) == 3
    stopped = [t for t, e in epochs.items() if e < 2]
    # the references are never stopped (whether ASHA cuts the sampled trial depends on its score;
    # the cut itself is tested in-process: test_neither_scheduler_stops_a_reference_trial)
    assert {r["reference"] for r in table if r["reference"] and epochs[r["trial_id"]] == 2} == {
        "AT", "paper"}, epochs
    assert not any(r["reference"] for r in table if r["trial_id"] in stopped)
    assert all(r["status"] == ("stopped early by ASHA" if r["trial_id"] in stopped else "completed")
               for r in table)
    assert sorted(r["reference"] for r in table if r["reference"]) and {
        r["reference"] for r in table if r["reference"]} == {"AT", "paper"}  # both references ran
    report = (out / "report.md").read_text()
    assert ("stopped early by ASHA" in report) == bool(stopped)  # labelled as what happened
    assert "## Confirmation at full length" in report
    rows = [line for line in report.splitlines() if line.startswith(("| AT", "| paper", "| search-1"))]
    assert len(rows) == 3 and sum("**(winner)**" in r for r in rows) == 1, rows
    winner = next(r for r in rows if "**(winner)**" in r).split()[1]
    assert all(" +- " in r for r in rows)  # mean +- std over 2 or 3 seeds
    finished = {p.parent.name for p in (out / "ray").glob("smoke-confirm-*/finished.json")}
    for r in rows:  # the seeds column is the runs each candidate trained; 2 only if it stopped
        cells = [c.strip() for c in r.split("|")]
        name, seeds, race = cells[1].split()[0], int(cells[4]), cells[-2]
        assert {f"smoke-confirm-{name}-s{s}" for s in range(seeds)} <= finished, (r, finished)
        assert seeds == 3 or race.startswith("stopped after 2 seeds") or (
            "**(winner)**" in r and all(c.count("stopped after 2") for c in rows if c != r)), r
    assert f"- Full-length runs: {len(finished)} ({len(finished)} epochs)" in report
    best = load_yaml(out / "best.yaml")
    assert best.train.epochs == 1  # the space's long_run length, not the search fidelity (2)
    assert best.attack.eval_steps == 3  # the space's fixed fields
    searched = [r for r in table if not r["reference"] and r["epoch"] == epochs[r["trial_id"]]]
    top = max(searched, key=lambda r: (r["val_robust_acc"], r["val_clean_acc"]))
    expected = {"AT": (0.0, 0.0, 0.1), "paper": (0.7, 0.95, 0.1),
                "search-1": (top["adr.lambda_start"], top["adr.lambda_end"], top["optim.lr"])}
    lam0, lam1, lr = expected[winner]
    assert (best.adr.lambda_start, best.adr.lambda_end, best.optim.lr) == (
        pytest.approx(lam0), pytest.approx(lam1), pytest.approx(lr))
    assert "confirmed winner: " + winner in done.stdout
    assert (out / "optimization_history.png").exists()
    rc = train_main(["--from-search", str(out), "--workers", "0", "--no-progress", "--set",
                     "train.max_steps=3", "--set", "train.device=cpu", "--out",
                     str(tmp_path / "long")])
    assert rc == 0 and (tmp_path / "long" / "final.pt").exists()


