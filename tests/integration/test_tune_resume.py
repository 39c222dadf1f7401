"""A killed search (SIGKILL of the driver's process group: the driver and the local Ray it started)
resumes by rerunning the same command: a trial Optuna holds as finished is kept and never
reported to Optuna again, and a torn searcher state makes the resumed search wait, never stick.

Its own module: each test runs the CLI in subprocesses that start their own local Ray.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _space(tmp_path, *, scheduler=None, epochs=1, references=False, samples=2):
    raw = yaml.safe_load(open("tests/assets/ci_space.yaml"))
    raw |= {"budget": {"epochs": epochs}, "confirm": {"top_k": 0}, "num_samples": samples,
            "max_concurrent": 1, "references": references}  # few trials: resume is under test
    if scheduler:
        raw["scheduler"] = scheduler
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _complete_trials(out):
    import optuna

    if not (out / "ray" / "smoke").exists():  # the driver creates the study before Tune starts;
        return []  # reading the database while it creates its tables can fail either side
    try:
        study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{out / 'optuna.db'}")
    except Exception:  # the study is created by the driver a few seconds in
        return []
    return [t for t in study.trials if t.state.name == "COMPLETE"]


def _kill_after_first_complete(cmd, out, env, timeout=300):
    """Start the search, SIGKILL its process group as soon as Optuna records a COMPLETE trial;
    return {number: (params, values)} of the trials complete at the kill."""
    with open(out.parent / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _complete_trials(out) and first.poll() is None:
        time.sleep(0.2)
    _kill_group(first)
    return {t.number: (t.params, t.values) for t in _complete_trials(out)}


def _kill_group(process) -> None:
    """SIGKILL the driver's process group: the driver and the local Ray it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the driver exited by itself (its log says why)
        pass
    process.wait()


def _first_log(out) -> str:
    return (out.parent / "first.log").read_text()[-3000:]


def _kept(out, finished_before) -> dict:
    """The trials COMPLETE in the study now; those complete before are kept, not rerun."""
    now = {t.number: (t.params, t.values) for t in _complete_trials(out)}
    for number, record in finished_before.items():
        assert now[number] == record
    return now


def _trial_statuses(experiment: Path) -> dict[str, str]:
    """{trial id: status} in the newest experiment state Tune has written to storage."""
    try:
        state = json.loads(sorted(experiment.glob("experiment_state-*.json"))[-1].read_text())
    except (IndexError, OSError, ValueError):  # not yet written, or being copied
        return {}
    return {(t := json.loads(tj))["trial_id"]: t["status"] for tj, _ in state["trial_data"]}


SEARCHER_FILES = ("search_gen_state-*.json", "searcher-state-*.pkl")
TRIALS = 3


@pytest.mark.timeout(1200)
def test_a_search_killed_twice_resumes_without_losing_or_rereporting_a_finished_trial(tmp_path):
    """Three trials, one at a time (scheduler none); the driver's process group is SIGKILLed
    twice and the same command resumes each time:

    1. the moment trial 0 is COMPLETE in the Optuna study. The kill races Tune's experiment
       checkpoint: where Tune had saved trial 0 as ended, the resume has nothing to recognise;
       where it had not, the resume must say it found trial 0 in the study. Either way trial 0
       is never reported to Optuna again (UpdateFinishedTrialError) and its record is kept.
    2. in the resumed search, once Tune records the end of the next trial, with a torn state
       made on purpose. Tune writes its trial list and its searcher state one after the other and
       copies them to storage in a background thread, so a kill can leave a trial list newer than
       the searcher, whose concurrency slot is still held by the finished trial: the searcher
       files from while that trial ran, the trial list from after it ended (the stall). The
       resumed search must free the slot, say what it waits for, and finish.

    One search for both kills: each driver start is a local Ray start, each trial a
    TorchTrainer.fit (the two kills were two searches)."""
    out = tmp_path / "search"
    experiment = out / "ray" / "smoke"
    space = _space(tmp_path, scheduler={"type": "none"}, samples=TRIALS)
    cmd = [sys.executable, "-m", "adr_scale.tune", "--space", str(space), "--out", str(out)]
    env = os.environ | {"PYTHONUNBUFFERED": "1", "ADR_SCALE_WAIT_REPORT_S": "5"}

    # 1. killed as trial 0 completes in the study
    finished_before = _kill_after_first_complete(cmd, out, env)
    assert finished_before, "no trial finished before the kill: " + _first_log(out)
    tune_had_it = "TERMINATED" in _trial_statuses(experiment).values()

    # 2. resumed, and killed once Tune has recorded the end of a second trial (trial 0 is rerun
    # first where Tune had not recorded its end)
    with open(tmp_path / "second.log", "w") as second_log:
        second = subprocess.Popen(cmd, stdout=second_log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    saved, deadline = tmp_path / "searcher-while-it-ran", time.monotonic() + 420
    while time.monotonic() < deadline and second.poll() is None:
        statuses = list(_trial_statuses(experiment).values())
        if statuses.count("TERMINATED") == 1 and "RUNNING" in statuses:
            shutil.rmtree(saved, ignore_errors=True)
            saved.mkdir()
            for pattern in SEARCHER_FILES:  # the newest (each driver start writes its own)
                for f in sorted(experiment.glob(pattern))[-1:]:
                    shutil.copy(f, saved / f.name)
        elif statuses.count("TERMINATED") >= 2:
            break  # Tune has recorded the second trial's end
        time.sleep(0.2)
    _kill_group(second)
    log = (tmp_path / "second.log").read_text()
    assert "resuming the search" in log and "UpdateFinishedTrialError" not in log, log[-3000:]
    if not tune_had_it:
        assert "is already COMPLETE in the Optuna study (#0" in log  # recognised on resume
    finished_mid = _kept(out, finished_before)
    assert list(_trial_statuses(experiment).values()).count("TERMINATED") >= 2, log[-3000:]
    assert len(finished_mid) > len(finished_before)
    assert len(list(saved.glob("*"))) == 2, "no searcher state was seen while the trial ran"
    for pattern in SEARCHER_FILES:  # the torn checkpoint: an older searcher state
        for f in experiment.glob(pattern):
            f.unlink()
    for f in saved.iterdir():
        shutil.copy(f, experiment / f.name)

    # 3. resumed to the end
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    took = time.monotonic() - start
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "resuming the search" in log and "UpdateFinishedTrialError" not in log
    assert "resume: freed 1 searcher slot(s) held by trials that will not run again" in log or (
        "resume: trial" in log and "is Optuna trial #" in log), log[-3000:]
    assert "search waiting (" in log  # the resumed search says what it waits for
    assert len(_kept(out, finished_mid)) == TRIALS
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len({r["trial_id"] for r in table}) == TRIALS  # those finished before the kills count
    assert {r["status"] for r in table} == {"completed"}
    print(f"search resumed after two kills: {took:.0f} s")
    print("\n".join(line for line in log.splitlines() if line.startswith(("resume:", "search wa"))))


def test_reconcile_restored_searcher_with_the_trials_and_the_study(tmp_path, capsys):
    """Each way a kill tears the searcher state from Tune's trial list, on a real OptunaSearch
    (SQLite study) behind Tune's ConcurrencyLimiter, without a cluster: a trial the study holds
    COMPLETE is not reported again, a slot held by a finished trial is freed, a trial proposed
    after Tune's last save is marked FAIL, and one the searcher missed is adopted."""
    import pickle

    import optuna

    from adr_scale.search.driver import _searcher
    from adr_scale.search.resume import reconcile_search
    from adr_scale.search.space import CLEAN_METRIC, METRIC, load_space

    space = load_space(_space(tmp_path))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = _searcher(space, url, 1, space.num_samples)
    limiter, optuna_search = search.searcher, search.searcher.searcher
    study = optuna.load_study(study_name="smoke", storage=url)
    config0 = limiter.suggest("t0")
    search._counter = 1
    study.tell(0, 0.5)  # Optuna holds trial 0 COMPLETE; the saved searcher state predates that
    result = {METRIC: 0.9, CLEAN_METRIC: 0.9, "training_iteration": 1}

    reconcile_search(search, {"t0": ("RUNNING", config0)})  # Tune reruns trial 0
    limiter.on_trial_result("t0", result)  # its re-announced final row: ignored, no error
    limiter.on_trial_complete("t0", result)
    assert study.trials[0].values == [0.5] and limiter.live_trials == set()
    assert "t0 is already COMPLETE in the Optuna study (#0" in capsys.readouterr().out

    limiter.live_trials = {"t0"}  # a slot still held by trial 0, which Tune holds TERMINATED
    reconcile_search(search, {"t0": ("TERMINATED", config0)})
    assert "freed 1 searcher slot(s) held by trials that will not run again (t0)" in (
        capsys.readouterr().out)
    config1 = limiter.suggest("t1")
    assert config1 is not None  # without the fix: None for ever (the stall)

    older = pickle.dumps(optuna_search.__dict__)  # the searcher state saved before t2 was proposed
    search._counter = 2
    limiter.on_trial_complete("t1", result)
    config2 = limiter.suggest("t2")
    search._counter = 3
    lost = limiter.suggest("t3") is None  # the limit (1) holds t3 back: nothing proposed
    assert lost
    optuna_search.__dict__.update(pickle.loads(older))
    limiter.live_trials = {"t1"}
    trials = {"t0": ("TERMINATED", config0), "t1": ("TERMINATED", config1),
              "t2": ("RUNNING", config2)}
    reconcile_search(search, trials)  # Tune knows t2, the (older) searcher does not
    out = capsys.readouterr().out
    assert "resume: trial t2 is Optuna trial #2" in out
    assert search._counter == 3 and limiter.live_trials == {"t2"}
    limiter.on_trial_complete("t2", result | {METRIC: 0.7})
    assert study.trials[2].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[2].values == [0.7]

    limiter.suggest("t4")  # proposed, then the driver dies before Tune saves its trial list
    reconcile_search(search, trials)
    assert "Optuna trial #3 (Tune t4) was proposed after Tune's last experiment checkpoint" in (
        capsys.readouterr().out)
    assert study.trials[3].state == optuna.trial.TrialState.FAIL



def test_halving_proposes_past_its_paused_trials_and_resumes_without_a_limiter(tmp_path, capsys):
    """Successive halving pauses a trial at each rung: its search has no ConcurrencyLimiter (one
    would hold the paused trial's slot and propose nothing more: the stall CI met at 438866d),
    and a restored one reconciles without it."""
    from adr_scale.search.driver import _tuner_setup
    from adr_scale.search.resume import reconcile_search
    from adr_scale.search.space import load_space

    space = load_space(_space(tmp_path, scheduler={"type": "halving", "grace_period": 1,
                                                   "reduction_factor": 3}, epochs=3))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = _tuner_setup(space, url, 3, 1, state_dir=tmp_path)["tune_config"].search_alg
    assert not hasattr(search.searcher, "live_trials")  # no ConcurrencyLimiter
    configs = [search.searcher.suggest(f"t{k}") for k in range(3)]  # none finished yet
    assert all(c is not None for c in configs) and len({str(c) for c in configs}) == 3
    search._counter = 2  # Tune saved its trial list after two of the three
    reconcile_search(search, {"t0": ("PAUSED", configs[0]), "t1": ("PAUSED", configs[1])})
    out = capsys.readouterr().out
    assert "Optuna trial #2 (Tune t2) was proposed after Tune's last experiment checkpoint" in out
    assert search._counter == 2 and set(search.searcher._ot_trials) == {"t0", "t1"}


def test_asha_ranks_a_resumed_search_against_the_rungs_recorded_before_the_kill(tmp_path):
    """Tune restores the scheduler as it was pickled when the search began (empty rungs): the
    rungs in OUT/asha_rungs.json are read back, so a trial that trails a rung recorded before the
    kill is still stopped there, and a restored trial keeps its bracket. Real Ray Tune objects, no
    cluster: the scheduler's decisions are the thing under test."""
    import pickle

    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from adr_scale.search.driver import _scheduler
    from adr_scale.search.schedulers import ASHA_STATE
    from adr_scale.search.space import METRIC, load_space

    space = load_space(_space(tmp_path, scheduler={"type": "asha", "grace_period": 1,
                                                   "reduction_factor": 2}, epochs=4,
                              references=True))
    fresh = _scheduler(space, state_dir=tmp_path)
    pickled = pickle.dumps(fresh)  # what Tuner.restore gets back: the scheduler at the start
    t0, t1, t2 = (Trial("run_trial", trial_id=f"t{k}", stub=True) for k in range(3))
    fresh.on_trial_add(None, t0)
    assert fresh.on_trial_result(None, t0, {"epoch": 1, METRIC: 0.6}) == TrialScheduler.CONTINUE
    fresh.on_trial_add(None, t1)
    assert fresh.on_trial_result(None, t1, {"epoch": 1, METRIC: 0.7}) == TrialScheduler.CONTINUE
    saved = json.loads((tmp_path / ASHA_STATE).read_text())
    assert saved["trials"] == {"t0": 0, "t1": 0}
    assert [m for m, _ in saved["brackets"][0]] == [4, 2, 1]  # Ray's milestones, max_t first
    assert saved["brackets"][0][2][1] == {"t0": 0.6, "t1": 0.7}
    # the driver dies; the resumed search unpickles the scheduler of the start
    restored = pickle.loads(pickled)
    assert all(not recorded for _, recorded in restored._brackets[0]._rungs)
    restored.on_trial_add(None, t1)
    restored.on_trial_add(None, t2)
    assert restored.on_trial_result(None, t2, {"epoch": 1, METRIC: 0.5}) == TrialScheduler.STOP
    assert restored.on_trial_result(None, t1, {"epoch": 2, METRIC: 0.8}) == TrialScheduler.CONTINUE
    again = json.loads((tmp_path / ASHA_STATE).read_text())
    assert again["brackets"][0][2][1] == {"t0": 0.6, "t1": 0.7, "t2": 0.5}
    assert again["brackets"][0][1][1] == {"t1": 0.8}
    # without the file, the restored ASHA would have had no record to cut t2 against
    (tmp_path / ASHA_STATE).unlink()
    blank = pickle.loads(pickled)
    blank.on_trial_add(None, t2)
    assert blank.on_trial_result(None, t2, {"epoch": 1, METRIC: 0.5}) == TrialScheduler.CONTINUE


def test_neither_scheduler_stops_a_reference_trial(tmp_path):
    """The paper's schedule and plain AT are the search's yardsticks: ASHA records their rung
    scores (the others are cut against them) but never stops them; successive halving keeps them
    out of its bracket (counted without them), never pausing or recording them. Real Tune
    objects, no cluster; the decisions are the thing under test."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from adr_scale.search.driver import _scheduler
    from adr_scale.search.schedulers import ASHA_STATE, HALVING_STATE
    from adr_scale.search.space import METRIC, load_space

    space = load_space(_space(tmp_path, scheduler={"type": "asha", "grace_period": 1,
                                                   "reduction_factor": 2}, epochs=4,
                              references=True))
    paper, at = space.reference_points().values()
    names = [p.name for p in space.params]
    sampled = [dict(zip(names, (1.5 + k / 10, 0.4, 0.3, 0.2), strict=True)) for k in range(3)]
    ref_p, ref_a, t0, t1, t2 = (Trial("run_trial", trial_id=tid, stub=True, config=cfg)
                                for tid, cfg in zip(("rp", "ra", "t0", "t1", "t2"),
                                                    (paper, at, *sampled), strict=True))
    asha = _scheduler(space, state_dir=tmp_path)
    for trial, score in ((t0, 0.9), (t1, 0.95), (ref_p, 0.1), (ref_a, 0.05), (t2, 0.04)):
        asha.on_trial_add(None, trial)
        action = asha.on_trial_result(None, trial, {"epoch": 1, METRIC: score})
        assert action == (TrialScheduler.STOP if trial is t2 else TrialScheduler.CONTINUE), trial
    rung_1 = json.loads((tmp_path / ASHA_STATE).read_text())["brackets"][0][2][1]
    assert rung_1 == {"t0": 0.9, "t1": 0.95, "rp": 0.1, "ra": 0.05, "t2": 0.04}

    space = load_space(_space(tmp_path, scheduler={"type": "halving", "grace_period": 1,
                                                   "reduction_factor": 3}, epochs=3,
                              references=True))
    halving = _scheduler(space, num_samples=4, state_dir=tmp_path)  # 2 references + 2 sampled
    halving.on_trial_add(None, t0)
    assert halving.on_trial_result(None, t0, {"epoch": 1, METRIC: 0.9}) == TrialScheduler.PAUSE
    for ref in (ref_p, ref_a):
        for epoch in (1, 3):
            assert halving.on_trial_result(None, ref, {"epoch": epoch, METRIC: 0.1}) == (
                TrialScheduler.CONTINUE)
        halving.on_trial_complete(None, ref, {"epoch": 3, METRIC: 0.1})
    rungs = json.loads((tmp_path / HALVING_STATE).read_text())
    assert rungs["bracket"] == 2 and rungs["recorded"]["1"] == {"t0": 0.9}
    assert rungs["ended"] == [] and rungs["promoted"]["1"] is None  # still waits for t1


PROBE = r'''
import ray
from adr_scale.ray_adapter import start_local_ray

start_local_ray(1)


@ray.remote(num_cpus=0)
class Asker:
    def state_of(self, actor_id):  # what Ray Train's PlacementGroupCleaner asks
        from ray.util.state import get_actor
        return get_actor(actor_id, timeout=60).state

    def from_a_detached_actor(self, actor_id):  # the cleaner: detached, made by the controller
        return ray.get(Asker.options(lifetime="detached").remote().state_of.remote(actor_id))


asker = Asker.remote()
print("state:", ray.get(asker.from_a_detached_actor.remote(asker._actor_id.hex())))
'''


@pytest.mark.timeout(400)
def test_workers_of_a_search_find_their_ray_beside_another_one(tmp_path):
    """With a second local Ray running, the State API in a search's workers (where Ray Train
    cleans up a stopped trial's placement group) finds the search's own cluster, not "multiple
    active Ray instances"."""
    other = subprocess.Popen([sys.executable, "-c", "import time; from adr_scale.ray_adapter import "
                              "start_local_ray; start_local_ray(1); print('up', flush=True); "
                              "time.sleep(600)"],  # start_local_ray: retried on a busy box
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert other.stdout.readline().strip() == "up"
        (tmp_path / "probe.py").write_text(PROBE)
        done = subprocess.run([sys.executable, str(tmp_path / "probe.py")], capture_output=True,
                              text=True, timeout=300)
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()
    assert "state: ALIVE" in done.stdout, (done.stdout + done.stderr)[-3000:]
