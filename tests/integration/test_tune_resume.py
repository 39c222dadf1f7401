"""A killed search (SIGKILL of the driver's process group: the driver and the local Ray it started)
resumes by rerunning the same command: a trial Optuna holds as finished is kept and never
reported to Optuna again, and a loaded machine makes the resumed search slower, never stuck.

Its own module: each test runs the CLI in subprocesses that start their own local Ray.
"""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _space(tmp_path, *, scheduler=None):
    raw = yaml.safe_load(open("search_spaces/smoke.yaml"))
    raw |= {"budget": {"epochs": 1}, "confirm": {"top_k": 0}, "num_samples": 2,
            "max_concurrent": 1}
    if scheduler:
        raw["scheduler"] = scheduler
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


def _kill_after_first_complete(cmd, out, env, timeout=300):
    """Start the search, SIGKILL its process group as soon as Optuna records a COMPLETE trial;
    return {number: (params, values)} of the trials complete at the kill."""
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _complete_trials(out) and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
    first.wait()
    return {t.number: (t.params, t.values) for t in _complete_trials(out)}


def _check_resumed(done, out, finished_before):
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "resuming the search" in log
    assert "UpdateFinishedTrialError" not in log
    after = {t.number: (t.params, t.values) for t in _complete_trials(out)}
    for number, record in finished_before.items():
        assert after[number] == record  # a finished trial is kept, not rerun
    assert len(after) == 2
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len({r["trial_id"] for r in table}) == 2  # the trial finished before the kill counts
    assert {r["status"] for r in table} == {"completed"}
    return log


@pytest.mark.timeout(450)
def test_a_trial_optuna_holds_as_finished_is_not_reported_again(tmp_path):
    """scheduler none, one trial at a time, killed the moment trial 0 is COMPLETE in the study:
    the resumed search must not re-report trial 0 to Optuna (UpdateFinishedTrialError)."""
    out = tmp_path / "search"
    space = _space(tmp_path, scheduler={"type": "none"})
    cmd = [sys.executable, "-m", "adr_scale.tune", "--space", str(space), "--out", str(out)]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    finished_before = _kill_after_first_complete(cmd, out, env)
    assert finished_before, "no trial finished before the kill"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    _check_resumed(done, out, finished_before)
