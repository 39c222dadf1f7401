"""The rung-keeping Tune schedulers of `python -m adr_scale.tune`: synchronous successive halving
(`scheduler: {type: halving}`) and ASHA (`type: asha`). Each writes its rung records to a file
beside the search after every change and reads it back on a restored search (Tune keeps no
scheduler state in its experiment checkpoint), so a resumed search ranks against the records
made before the kill. Neither stops a reference trial (the paper's schedule, plain AT): they are
the yardsticks and run the whole search budget. Imported by the driver only (it needs Ray)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from adr_scale.search.rungs import rung_milestones

HALVING_STATE = "halving_rungs.json"  # in --out: the successive-halving rung records
ASHA_STATE = "asha_rungs.json"  # in --out: ASHA's rung records


def _is_reference(reference_of: Callable[[dict[str, Any]], str | None] | None,
                  trial: Trial) -> bool:
    return reference_of is not None and reference_of(trial.config or {}) is not None


def _save_json(path: str, state: Any) -> None:
    from adr_scale.run.directory import atomic_write_text

    atomic_write_text(Path(path), json.dumps(state, indent=1) + "\n")


class ResumableASHA(ASHAScheduler):
    """Ray's ASHA whose rungs ({trial id: score} per milestone and bracket) are saved to
    `state_path` after every result and read back before the first decision of a restored
    search. A trial keeps the bracket it had (a trial new to the file draws one as Ray does).
    A reference trial's scores are recorded (the others are measured against them), but it is
    never stopped."""

    def __init__(self, *, state_path: str,
                 reference_of: Callable[[dict[str, Any]], str | None] | None = None,
                 **options: Any):
        super().__init__(**options)
        self._path, self._loaded, self._reference_of = state_path, False, reference_of
        self._bracket_of: dict[str, int] = {}  # trial id -> its bracket's index, ended ones too

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_loaded": False}  # the file, not a pickled copy, holds the rungs

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            saved = json.loads(Path(self._path).read_text())
        except FileNotFoundError:
            return
        for bracket, rungs in zip(self._brackets, saved["brackets"], strict=True):
            bracket._rungs = [(milestone, dict(recorded)) for milestone, recorded in rungs]
        self._bracket_of = saved["trials"]

    def _save(self) -> None:
        brackets = [[[m, {t: float(v) for t, v in rec.items()}] for m, rec in b._rungs]
                    for b in self._brackets]
        self._bracket_of |= {t: self._brackets.index(b) for t, b in self._trial_info.items()}
        _save_json(self._path, {"brackets": brackets, "trials": self._bracket_of})

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        known = self._bracket_of.get(trial.trial_id)
        if known is None:
            super().on_trial_add(tune_controller, trial)
        else:
            self._trial_info[trial.trial_id] = self._brackets[known]

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        self._load()
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        if action == TrialScheduler.STOP and _is_reference(self._reference_of, trial):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE  # a yardstick runs the whole budget
        return action

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._load()
        super().on_trial_complete(tune_controller, trial, result)
        self._save()


class SuccessiveHalving(FIFOScheduler):
    """Synchronous successive halving over one bracket of `bracket` trials (Jamieson and
    Talwalkar 2016; HyperBand's most aggressive bracket). A trial that reaches a rung
    (grace * rf**k epochs) is paused until every trial of the rung has reported; then the
    best floor(n / rf) (at least one) continue and the rest stop. Unlike asynchronous ASHA,
    no trial passes a rung for being early, so the cost of a bracket is fixed
    (`halving_cost`). The rung records are saved to `state_path` after every change and
    read back on a restored search (Tune saves no scheduler state in its experiment
    checkpoint), so a resumed search ranks against the records made before the kill.

    A paused trial's Train run keeps its checkpoints: unpaused, `run_trial` rebuilds the
    same named Ray Train run, which resumes from its latest epoch. The reference trials are
    outside the bracket (`bracket` counts the others): never recorded, paused or stopped, they
    run the whole budget, so a search of n trials costs `halving_cost(n - refs, ...) + refs *
    max_t` epochs."""

    def __init__(self, *, metric: str, max_t: int, bracket: int, grace_period: int,
                 reduction_factor: int, state_path: str, time_attr: str = "epoch",
                 reference_of: Callable[[dict[str, Any]], str | None] | None = None):
        super().__init__()
        self._metric, self._time_attr, self._max_t = metric, time_attr, max_t
        self._bracket, self._rf, self._path = bracket, reduction_factor, state_path
        self._reference_of = reference_of  # trial config -> "paper", "AT" or None
        self._milestones = rung_milestones(max_t, grace_period, reduction_factor)
        self._state = None  # read lazily: on a restore the file holds the records

    # -- state ------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_state": None}  # the file, not a pickled copy, holds it

    def _records(self) -> dict[str, Any]:
        if self._state is None:
            fresh = {"bracket": self._bracket, "milestones": self._milestones,
                     "recorded": {str(m): {} for m in self._milestones},
                     "promoted": {str(m): None for m in self._milestones}, "ended": []}
            try:
                self._state = json.loads(Path(self._path).read_text())
            except FileNotFoundError:
                self._state = fresh
        return self._state

    def _save(self) -> None:
        _save_json(self._path, self._state)

    def _expected(self, k: int) -> set[str] | None:
        """Trial ids rung k waits for (None at the first rung: any `bracket` trials)."""
        if k == 0:
            return None
        return set(self._records()["promoted"][str(self._milestones[k - 1])] or ())

    def _full(self, k: int) -> bool:
        st = self._records()
        recorded, ended = set(st["recorded"][str(self._milestones[k])]), set(st["ended"])
        expected = self._expected(k)
        if expected is None:
            return len(recorded) + len(ended - recorded) >= st["bracket"]
        return st["promoted"][str(self._milestones[k - 1])] is not None and (
            expected <= recorded | ended)

    def _decide(self, tune_controller) -> None:
        """Rank every rung that is complete and undecided; stop its paused losers."""
        st = self._records()
        for k, m in enumerate(self._milestones):
            if st["promoted"][str(m)] is not None or not self._full(k):
                continue
            scores = st["recorded"][str(m)]
            ranked = sorted(scores, key=lambda t: (-scores[t], t))
            st["promoted"][str(m)] = ranked[:max(1, len(ranked) // self._rf)]
            self._save()
            losers = set(ranked) - set(st["promoted"][str(m)])
            for trial in tune_controller.get_trials():
                if trial.trial_id in losers and trial.status == Trial.PAUSED:
                    tune_controller.stop_trial(trial)

    # -- Tune's scheduler interface ---------------------------------------------------

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the metric is fixed (validation robust accuracy, maximised)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._records()

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        if (self._time_attr not in result or self._metric not in result
                or _is_reference(self._reference_of, trial)):
            return TrialScheduler.CONTINUE
        st, t, tid = self._records(), result[self._time_attr], trial.trial_id
        score = float(result[self._metric])
        for m in self._milestones:
            if t < m:
                break
            recorded, promoted = st["recorded"][str(m)], st["promoted"][str(m)]
            if tid not in recorded:  # the first result at or past this rung
                recorded[tid] = score if score == score else float("-inf")  # NaN: last
                self._save()
                self._decide(tune_controller)
                promoted = st["promoted"][str(m)]
            if promoted is None:
                return TrialScheduler.PAUSE  # until the rung is complete
            if tid not in promoted:
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _ended(self, tune_controller, trial) -> None:
        if _is_reference(self._reference_of, trial):
            return  # not in the bracket
        st = self._records()
        if trial.trial_id not in st["ended"]:
            st["ended"].append(trial.trial_id)
            self._save()
        self._decide(tune_controller)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._ended(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._ended(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._ended(tune_controller, trial)

    def _verdict(self, trial_id: str) -> str:
        """"new" (at no rung yet), "run" (promoted at its last rung), "wait" (at an undecided
        rung) or "stop" (a loser)."""
        st = self._records()
        at = [m for m in self._milestones if trial_id in st["recorded"][str(m)]]
        if not at:
            return "new"
        promoted = st["promoted"][str(at[-1])]
        return "wait" if promoted is None else "run" if trial_id in promoted else "stop"

    def choose_trial_to_run(self, tune_controller):
        """New trials first (they fill the first rung), then paused winners.

        A restored search gets every unfinished trial back as PENDING, and Tune starts an actor
        for every PENDING trial whatever this returns; so a trial that waits at an undecided rung
        is put back to PAUSED here (this runs before Tune stages any actor) and a loser of a
        decided rung is stopped, rather than restarting a Train run only to pause or stop it."""
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                verdict = self._verdict(trial.trial_id)
                if verdict == "wait":
                    tune_controller._set_trial_status(trial, Trial.PAUSED)  # as BOHB does
                elif verdict == "stop":
                    tune_controller.stop_trial(trial)
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        for trial in trials:
            if trial.status == Trial.PAUSED and self._verdict(trial.trial_id) == "run":
                return trial
        return None

    def debug_string(self) -> str:
        st = self._records()
        return "Successive halving: " + ", ".join(
            f"epoch {m}: {len(st['recorded'][str(m)])} recorded"
            + (f", {len(st['promoted'][str(m)])} kept" if st["promoted"][str(m)] else "")
            for m in self._milestones)
