"""Resuming a killed `python -m adr_scale.tune`: the restored searcher is reconciled with the trials
Tune restores and with the Optuna study, and a search says what it waits for. Imported by the
driver only (it needs Ray)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import SearchGenerator

# Tune saves the trial list (experiment_state-*.json) and the searcher (search_gen_state-*.json:
# the ConcurrencyLimiter's live slots; searcher-state-*.pkl: OptunaSearch's trials) one file
# after the other and copies them to storage in a background thread, every >= 10 s; Optuna
# writes a trial's end to its database at once. A driver killed in between leaves (a) a trial
# Tune reruns though the study holds it finished: its re-announced final row reached Optuna
# again (UpdateFinishedTrialError), and (b) a limiter slot held by a trial Tune holds finished or
# never saw: with max_concurrent slots held that way the searcher proposes nothing, ever (the
# stall; load widens the window, since the copy then takes longer).

WAIT_REPORT_S = float(os.environ.get("ADR_SCALE_WAIT_REPORT_S", "60"))  # s without any trial
# event after which the search prints what it waits for


def experiment_trials(directory: str | Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """{trial id: (Tune status, config)} of the newest experiment state in `directory` (the
    file Tune restores its trial list from: the newest name)."""
    files = sorted(Path(directory).glob("experiment_state-*.json"))
    if not files:
        return {}
    trials = {}
    for trial_json, _ in json.loads(files[-1].read_text())["trial_data"]:
        trial = json.loads(trial_json)
        trials[trial["trial_id"]] = (trial["status"], trial.get("config") or {})
    return trials


def reconcile_search(search, trials: dict[str, tuple[str, dict[str, Any]]], say=None) -> None:
    """Make a restored SearchGenerator(ConcurrencyLimiter(OptunaSearch)) (or, under successive
    halving, SearchGenerator(OptunaSearch)) agree with `trials` (what Tune restored) and with the
    Optuna study (the record of what finished); `say` (print) gets one line per change."""
    from optuna.trial import TrialState

    say = say or print

    limiter = search.searcher if hasattr(search.searcher, "live_trials") else None
    optuna_search = limiter.searcher if limiter is not None else search.searcher
    study, ot_trials = optuna_search._ot_study, optuna_search._ot_trials
    frozen = {t._trial_id: t for t in study.get_trials(deepcopy=False)}
    rerun = {tid for tid, (status, _) in trials.items() if status != "TERMINATED"}
    for tid in sorted(set(ot_trials) - set(trials)):  # proposed after Tune's last save
        record = frozen.get(ot_trials.pop(tid)._trial_id)
        optuna_search._completed_trials.discard(tid)
        if record is not None and record.state == TrialState.RUNNING:
            study.tell(record.number, state=TrialState.FAIL)
            say(f"resume: Optuna trial #{record.number} (Tune {tid}) was proposed after Tune's "
                "last experiment checkpoint and died with the killed driver: marked FAIL")
    for tid in sorted(rerun):
        if tid not in ot_trials and not _adopt(optuna_search, tid, trials[tid][1], frozen):
            optuna_search._completed_trials.add(tid)  # no study trial to tell: never report it
            say(f"resume: trial {tid} has no Optuna trial; it reruns without reporting to Optuna")
            continue
        record = frozen.get(ot_trials[tid]._trial_id) if tid in ot_trials else None
        if record is not None and record.state.is_finished() and (
                tid not in optuna_search._completed_trials):
            optuna_search._completed_trials.add(tid)
            say(f"resume: trial {tid} is already {record.state.name} in the Optuna study "
                f"(#{record.number}, value {record.values}); Tune reruns it from its last "
                "checkpoint and its re-announced result is not reported to Optuna again")
    if limiter is not None:
        stale = set(limiter.live_trials) - rerun
        if stale:
            say(f"resume: freed {len(stale)} searcher slot(s) held by trials that will not run "
                f"again ({', '.join(sorted(stale))})")
        limiter.live_trials = set(rerun)
        limiter.num_unfinished_live_trials = len(rerun)
    if search._counter != len(trials):
        say(f"resume: {len(trials)} trials in Tune's experiment state, the searcher counted "
            f"{search._counter}; continuing from {len(trials)} of {search.total_samples}")
        search._counter = len(trials)


def _adopt(optuna_search, tid: str, config: dict[str, Any], frozen) -> bool:
    """A trial Tune restored that the (older) searcher state does not know: take over the running
    study trial with its parameters (asked before the kill); False if there is none."""
    from optuna.trial import Trial, TrialState

    taken = {t._trial_id for t in optuna_search._ot_trials.values()}
    for record in frozen.values():
        if (record.state == TrialState.RUNNING and record._trial_id not in taken
                and record.params and all(k in config and math.isclose(v, config[k])
                                          for k, v in record.params.items())):
            optuna_search._ot_trials[tid] = Trial(optuna_search._ot_study, record._trial_id)
            print(f"resume: trial {tid} is Optuna trial #{record.number} (proposed after the "
                  "searcher's last save)")
            return True
    return False


def waiting_line(trials, search, idle_s: float) -> str:
    """What a search waits for: its running and pending trials, the free Ray resources, the
    placement groups not yet placed and the searcher's concurrency slots."""
    import ray

    parts = []
    for trial in trials:
        if trial.status == "RUNNING":
            parts.append(f"running {trial.trial_id} (epoch {trial.last_result.get('epoch', 0)})")
        elif trial.status in ("PENDING", "PAUSED"):
            needs = _resources(trial.placement_group_factory.required_resources)
            parts.append(f"{trial.status.lower()} {trial.trial_id} (needs {needs})")
    free, total = ray.available_resources(), ray.cluster_resources()
    parts.append(f"Ray free CPU {free.get('CPU', 0):g} of {total.get('CPU', 0):g}"
                 + (f", GPU {free.get('GPU', 0):g} of {total['GPU']:g}" if "GPU" in total else ""))
    unplaced = [_resources(b) for pg in ray.util.placement_group_table().values()
                if pg.get("state") == "PENDING" for b in pg.get("bundles", {}).values()]
    if unplaced:
        parts.append(f"placement groups waiting for {'; '.join(unplaced)}")
    limiter = getattr(search, "searcher", None)
    if hasattr(limiter, "live_trials"):  # an Optuna search (PBT: Tune's own variant generator)
        parts.append(f"searcher slots {len(limiter.live_trials)}/{limiter.max_concurrent} held by "
                     f"[{', '.join(sorted(limiter.live_trials))}], {search._counter} of "
                     f"{search.total_samples} trials proposed")
    return f"search waiting ({idle_s:.0f} s without a trial event): " + "; ".join(parts)


def _resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if v) or "nothing"


class ResumableSearch(SearchGenerator):
    """Tune's SearchGenerator, reconciled with the restored trials and the study on resume."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        reconcile_search(self, experiment_trials(dirpath))

class WaitReport(Callback):
    """Prints `waiting_line` after `every_s` seconds without a trial starting, reporting or
    ending, and again every `every_s` seconds while that lasts."""

    def __init__(self, search=None, every_s: float = WAIT_REPORT_S) -> None:
        self.search, self.every_s, self.since = search, every_s, time.monotonic()

    def setup(self, **info) -> None:
        self.since = time.monotonic()

    def _event(self, *args, **info) -> None:
        self.since = time.monotonic()

    on_trial_start = on_trial_result = on_trial_complete = on_trial_error = _event

    def on_step_end(self, iteration: int, trials, **info) -> None:
        idle = time.monotonic() - self.since
        if idle >= self.every_s:
            print(waiting_line(trials, self.search, idle), flush=True)
            self.since = time.monotonic()
