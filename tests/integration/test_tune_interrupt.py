"""The search end to end on a local Ray, stopped and resumed with real signals, on a user's own
images named only on the command line.

One search (ASHA, 3 trials of 2 epochs: the two references and one searched point; then the
confirmation, a race of 3 schedules over 2 to 3 seeds at 1 full-length epoch) on an ImageFolder
of the bundled digits written as PNGs, pointed at with `--set` (the space names no dataset), is
stopped three ways in a row: SIGINT to its process group (Ctrl-C) during the search phase,
SIGTERM to the driver during the confirmation, then run to its end. Each stop must exit 130 / 143
with one line, start no confirmation after an interrupted search, write no best.yaml that claims
a confirmation, never print nan or an empty seed list; the last run must finish with a confirmed
winner, real numbers, and a best.yaml that is the race's winner. The winner is then trained and
evaluated on the folder's own test split.

The module fixture runs the search once (each stage's outcome is recorded) and the tests check
it: a search costs a dozen TorchTrainer.fit calls, each mostly Ray start-up, so the stops, the
race, ASHA and the user's own data share one (they were three searches)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from adr_scale.config import load_yaml
from tests.conftest import write_digit_pngs

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.timeout(1500)]  # the first test sets up the whole search

TRIALS = 3  # the 2 references and one searched point: the fewest a search with references runs


def _space(tmp_path: Path) -> Path:
    raw = yaml.safe_load(open("tests/assets/ci_space.yaml"))  # the space names no dataset; ASHA
    # the warm start trains well, tiny learning rates do not: ASHA may cut the searched point
    raw["params"]["optim.lr"] = {"distribution": "loguniform", "low": 1e-4, "high": 0.2}
    raw["warm_start"]["optim.lr"] = 0.1
    raw |= {"budget": {"epochs": 2}, "num_samples": TRIALS, "max_concurrent": 2,
            "confirm": {"top_k": 1, "min_seeds": 2, "seeds": 3, "max_concurrent": 2},
            "long_run": {"train.epochs": 1}}  # not the search fidelity (2)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _wait_for(proc: subprocess.Popen, found, what: str, log: Path, limit_s: float = 400) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if found():
            return
        assert proc.poll() is None, f"ended before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no {what} within {limit_s} s:\n{log.read_text()[-3000:]}")


def _checkpoints(storage: Path, prefix: str) -> list[Path]:
    return [p for p in storage.glob(f"{prefix}*/epoch-*") if p.is_dir()]


def _outputs(out: Path) -> dict[str, str | None]:
    """report.md and best.yaml as a stage left them (None: not written)."""
    return {name: (out / name).read_text() if (out / name).exists() else None
            for name in ("report.md", "best.yaml")}


def _no_false_claim(stage: dict) -> None:
    text = stage["text"]
    assert "nan" not in text and "seeds []" not in text, text[-3000:]
    for body in stage["outputs"].values():
        if body is not None:
            assert "nan %" not in body and "seeds []" not in body, body[:2000]


@pytest.fixture(scope="module")
def stopped_search(tmp_path_factory):
    """The search stopped by SIGINT, then by SIGTERM, then run to its end with the same command:
    {stage: exit status, output and what it left}, and the paths."""
    tmp_path = tmp_path_factory.mktemp("stopped")
    data = tmp_path / "digits"
    write_digit_pngs(data)
    out, space = tmp_path / "search", _space(tmp_path)
    storage = out / "ray"
    sets = ["data.dataset=imagefolder", f"data.root={data}", "data.channels=1",
            "data.val_size=50", "attack.eval_steps=2"]
    cmd = [sys.executable, "-m", "adr_scale.tune", "--space", str(space), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    stages = {"tmp": tmp_path, "data": data, "out": out}

    # 1. Ctrl-C (SIGINT to the process group) once the first search trial has a checkpoint
    log1 = tmp_path / "first.log"
    first = _start(cmd, log1)
    _wait_for(first, lambda: _checkpoints(storage, "smoke-"), "search checkpoint", log1)
    os.killpg(first.pid, signal.SIGINT)
    code = first.wait(timeout=180)
    stages["sigint"] = {"code": code, "text": log1.read_text(), "outputs": _outputs(out),
                        "confirm_dirs": list(storage.glob("smoke-confirm*"))}

    # 2. SIGTERM to the driver once the first confirmation run has a checkpoint
    log2 = tmp_path / "second.log"
    second = _start(cmd, log2)
    _wait_for(second, lambda: _checkpoints(storage, "smoke-confirm-"), "confirmation checkpoint",
              log2, limit_s=600)
    second.send_signal(signal.SIGTERM)
    code = second.wait(timeout=180)
    stages["sigterm"] = {"code": code, "text": log2.read_text(), "outputs": _outputs(out)}

    # 3. the same command finishes: the finished runs are reused, the winner is confirmed
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                           env=os.environ | {"PYTHONUNBUFFERED": "1"})
    stages["end"] = {"code": third.returncode, "stdout": third.stdout,
                     "text": third.stdout + third.stderr, "outputs": _outputs(out)}
    return stages


def test_ctrl_c_in_the_search_starts_no_confirmation_and_claims_nothing(stopped_search):
    stage = stopped_search["sigint"]
    text = stage["text"]
    assert stage["code"] == 130, text[-3000:]
    line = [x for x in text.splitlines() if x.startswith("interrupted (SIGINT): ")]
    assert len(line) == 1 and line[0].endswith(
        "search trials finished, no confirmation started; rerun the same command to resume"), text
    done = int(line[0].split(": ")[1].split(" of ")[0])
    assert 0 <= done < TRIALS and f" of {TRIALS} " in line[0]
    assert "confirming" not in text and not stage["confirm_dirs"]
    assert stage["outputs"] == {"report.md": None, "best.yaml": None}
    _no_false_claim(stage)


def test_sigterm_in_the_confirmation_writes_no_winner(stopped_search):
    stage = stopped_search["sigterm"]
    text = stage["text"]
    assert stage["code"] == 143, text[-3000:]
    assert "resuming the search in" in text and "confirming 3 schedules" in text
    line = [x for x in text.splitlines() if x.startswith("interrupted (SIGTERM): ")]
    assert len(line) == 1 and "of confirmation round 1 finished, no winner written" in line[0], text
    assert "confirmed winner" not in text
    best = stage["outputs"]["best.yaml"]  # the search's best trial, not called confirmed
    assert best.startswith("# Best schedule of search") and "Confirmed" not in best
    report = stage["outputs"]["report.md"]
    assert f"{TRIALS} trials (" in report
    assert "## Confirmation at full length" not in report
    _no_false_claim(stage)


def test_the_same_command_finishes_the_stopped_search_with_a_confirmed_winner(stopped_search):
    stage = stopped_search["end"]
    text = stage["text"]
    assert stage["code"] == 0, text[-3000:]
    assert "confirming 3 schedules" in text
    assert [x for x in stage["stdout"].splitlines()[-3:] if x.startswith("confirmed winner: ")]
    rows = [x for x in stage["stdout"].splitlines() if x.startswith("  full length ")]
    assert len(rows) == 3 and all("(seeds [0, 1])" in r or "(seeds [0, 1, 2])" in r
                                  for r in rows), rows
    assert stage["outputs"]["best.yaml"].startswith("# Confirmed winner of search 'smoke'")
    assert "## Confirmation at full length" in stage["outputs"]["report.md"]
    _no_false_claim(stage)


def test_asha_stops_only_searched_trials_and_labels_what_happened(stopped_search):
    """References run to the budget; a trial ASHA cut is labelled so in the table and report."""
    out = stopped_search["out"]
    table = pq.read_table(out / "results.parquet").to_pylist()
    epochs: dict[str, int] = {}
    for r in table:
        epochs[r["trial_id"]] = max(epochs.get(r["trial_id"], 0), r["epoch"])
    assert len(epochs) == TRIALS
    stopped = [t for t, e in epochs.items() if e < 2]
    # whether ASHA cuts the searched point depends on its score (the cut itself is tested
    # in-process: test_neither_scheduler_stops_a_reference_trial); the references never
    assert {r["reference"] for r in table if r["reference"]} == {"AT", "paper"}
    assert all(epochs[r["trial_id"]] == 2 for r in table if r["reference"]), epochs
    assert all(r["status"] == ("stopped early by ASHA" if r["trial_id"] in stopped else "completed")
               for r in table)
    report = (out / "report.md").read_text()
    assert ("stopped early by ASHA" in report) == bool(stopped)  # labelled as what happened
    assert (out / "optimization_history.png").exists()


def test_the_race_trains_what_its_bookkeeping_names_and_best_yaml_is_its_winner(stopped_search):
    """The race (top 1 + the paper's schedule + AT, 2 to 3 seeds): the seeds column is the runs
    each candidate trained, and best.yaml holds the winner's schedule at the long-run length."""
    out = stopped_search["out"]
    report = (out / "report.md").read_text()
    rows = [x for x in report.splitlines() if x.startswith(("| AT", "| paper", "| search-1"))]
    assert len(rows) == 3 and sum("**(winner)**" in r for r in rows) == 1, rows
    winner = next(r for r in rows if "**(winner)**" in r).split()[1]
    assert all(" +- " in r for r in rows)  # mean +- std over 2 or 3 seeds
    finished = {p.parent.name for p in (out / "ray").glob("smoke-confirm-*/finished.json")}
    for r in rows:  # 2 seeds only where the race stopped the candidate
        cells = [c.strip() for c in r.split("|")]
        name, seeds, race = cells[1].split()[0], int(cells[4]), cells[-2]
        assert {f"smoke-confirm-{name}-s{s}" for s in range(seeds)} <= finished, (r, finished)
        assert seeds == 3 or race.startswith("stopped after 2 seeds") or (
            "**(winner)**" in r and all(c.count("stopped after 2") for c in rows if c != r)), r
    assert f"- Full-length runs: {len(finished)} ({len(finished)} epochs)" in report
    assert "confirmed winner: " + winner in stopped_search["end"]["stdout"]
    best = load_yaml(out / "best.yaml")
    assert best.train.epochs == 1  # the space's long_run length, not the search fidelity (2)
    assert best.adr.ema_warmup is True  # the space's fixed fields
    table = pq.read_table(out / "results.parquet").to_pylist()
    last = {}
    for r in table:
        if not r["reference"] and r["epoch"] >= last.get(r["trial_id"], {}).get("epoch", 0):
            last[r["trial_id"]] = r
    top = max(last.values(), key=lambda r: (r["val_robust_acc"], r["val_clean_acc"]))
    expected = {"AT": (0.0, 0.0, 0.1), "paper": (0.7, 0.95, 0.1),
                "search-1": (top["adr.lambda_start"], top["adr.lambda_end"], top["optim.lr"])}
    lam0, lam1, lr = expected[winner]
    assert (best.adr.lambda_start, best.adr.lambda_end, best.optim.lr) == (
        pytest.approx(lam0), pytest.approx(lam1), pytest.approx(lr))


def test_a_search_on_an_imagefolder_set_from_the_command_line_and_its_evaluation(stopped_search):
    """The --set fields reach every stage and the winner's config; the winner then trains on the
    folder and is evaluated on its own test split."""
    tmp_path, data, out = (stopped_search[k] for k in ("tmp", "data", "out"))
    for name in ("sigint", "sigterm", "end"):  # the attack line of every start names the data
        text = stopped_search[name]["text"]
        assert "attack: Linf eps 16/255 (0.06275)" in text and "on imagefolder" in text, name
    best = load_yaml(out / "best.yaml")  # the --set fields reach the winner's config
    assert (best.data.dataset, best.data.root, best.data.channels) == ("imagefolder", str(data), 1)
    assert best.attack.eval_steps == 2
    report = (out / "report.md").read_text()
    assert f"{TRIALS} trials (" in report and "scrambled Sobol sequence" in report

    run = tmp_path / "long"
    trained = subprocess.run([sys.executable, "-m", "adr_scale.train", "--from-search",
                              str(out), "--set", "train.epochs=10", "--workers",
                              "0", "--out", str(run)],
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["class_names"] == [str(d) for d in range(10)]
    evaluated = subprocess.run([sys.executable, "-m", "adr_scale.evaluate", "--run", str(run),
                                "--attacks", "clean,pgd2", "--eps", "16/255", "--no-progress"],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-3000:]
    test = json.loads((run / "summary.json").read_text())["test"]
    assert (test["dataset"], test["split"], test["n"]) == ("imagefolder", "test", 120)
    accuracy = test["best"]["accuracy"]  # the folder's 120 test images, 10 classes
    assert set(accuracy) == {"clean", "pgd2"} and accuracy["pgd2"] <= accuracy["clean"]
    # well above chance (0.1), and near the validation split's: the same statistics and classes
    val = summary["best_val_clean_acc"]
    assert accuracy["clean"] > 0.3 and abs(accuracy["clean"] - val) < 0.25, (accuracy, val)
