"""A search trial, in its Tune trial actor: one Ray Train run per stretch up to a stop
(`run_trial`), a PBT segment (`run_pbt_trial`), a confirmation run (`run_confirm_trial`).

Each is the trainable that the driver (`search.driver`) or the confirmation stage
(`search.confirmation`) hands to Tune with `tune.with_parameters`; Tune names a trial's folder
after the function (`run_trial_<id>_...`), so these names are what a resumed search finds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adr_scale.config import to_dict
from adr_scale.run.files import (
    latest_run,
    mark_finished,
    read_lineage,
    read_segments,
    write_segment_files,
)
from adr_scale.search.rungs import rung_milestones
from adr_scale.search.space import SearchSpace

# A Train run inside a Tune trial never restarts its own worker group: when Tune stops or pauses
# the trial, its actor exits and takes the Train controller down, whose workers die first; a
# controller that may retry then starts a new worker group, and the placement group it creates
# as it dies is never removed (seen: a resumed halving search whose next trial waited for that
# CPU for ever). Restarts are Tune's (`--max-failures`: tune.FailureConfig), which relaunch the
# trial and so its Train run, resuming from the run's latest checkpoint.
IN_TRIAL_RESTARTS = 0


def run_trial(params: dict[str, Any], *, space: SearchSpace, workers: int, gpus: float,
              cpus: float, storage: str) -> None:
    """Train the trial's config on Ray Train, one Train run (of the same name, so each resumes
    from the last one's checkpoint) per stretch up to a stop: the budget, and under successive
    halving each rung as well. TuneReportCallback forwards the epochs before a stop as they
    come; the stop's own epoch is reported by this function once its Train run has ended. So
    Tune decides at a rung (pause, stop, go on) with no Train run up: a paused trial trains
    not one epoch past its rung, and a stopped one leaves no Train run to tear down."""
    import ray.tune

    from adr_scale.ray_adapter import make_trainer

    sampled = {p.name: params[p.name] for p in space.params}
    cfg = space.trial_config(sampled)
    name = f"{space.name}-{ray.tune.get_context().get_trial_id()}"

    def report_latest() -> None:
        """Report the trial's last trained epoch (returns if Tune says go on)."""
        path, rows = latest_run(storage, name)
        if rows:
            ray.tune.report(rows[-1] | {"checkpoint_path": path})

    stops = trial_stops(space, reference=space.reference_of_params(sampled) is not None)
    _, rows = latest_run(storage, name)
    done = rows[-1]["epoch"] if rows else 0
    if done in stops:  # relaunched (a resume, an unpaused trial) at a stop: say it again
        report_latest()
    for until in (s for s in stops if s > done):
        make_trainer({"config": to_dict(cfg), "until_epoch": until}, name=name, storage=storage,
                     workers=workers, gpus=gpus, cpus=cpus, max_failures=IN_TRIAL_RESTARTS,
                     callbacks=[_forward_before(until)]).fit()
        report_latest()


def trial_stops(space: SearchSpace, reference: bool = False) -> list[int]:
    """The epochs at which a search trial's Train run ends: its rungs (successive halving; not
    for a reference trial, which no rung pauses), then the budget."""
    sched = space.scheduler
    rungs = (rung_milestones(space.budget.epochs, sched.grace_period, sched.reduction_factor)
             if sched.type == "halving" and not reference else [])
    return [*rungs, space.budget.epochs]


def _forward_before(until: int):
    """A TuneReportCallback that forwards the epochs before `until` only."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ForwardBefore(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("epoch", until) < until:
                super().after_report(run_context, metrics, checkpoint)

    return ForwardBefore()


def run_pbt_trial(params: dict[str, Any], *, space: SearchSpace, workers: int, gpus: float,
                  cpus: float, storage: str) -> None:
    """A PBT trial: train `perturbation_interval` epochs at a time, each segment a Ray Train run
    that starts from the previous segment's checkpoint (after an exploit: another trial's, which
    Tune hands over as this trial's Tune checkpoint), and report a Tune checkpoint after each.
    When the tau / lambda ranges change, the learned schedule (adr.segments) gains a segment, so
    the winner's schedule can be replayed at full length. The checkpoint's lineage names the
    segment runs (and so the donor of an exploit) that trained the state."""
    import ray.tune

    start = ray.tune.get_checkpoint()
    segments, done, lineage = [], 0, []
    if start is not None:
        with start.as_directory() as directory:
            segments, done = read_segments(Path(directory))
            lineage = read_lineage(Path(directory))
    cfg = space.trial_config({p.name: params[p.name] for p in space.params})
    a = cfg.adr
    current = [a.tau_start, a.tau_end, a.lambda_start, a.lambda_end]
    segments = [s for s in segments if s[0] < done / space.budget.epochs]
    if not segments or segments[-1][1:] != current:
        segments.append([done / space.budget.epochs, *current])
    while done < space.budget.epochs:
        until = min(done + space.scheduler.perturbation_interval, space.budget.epochs)
        start, lineage = _train_segment(space, cfg, segments, lineage, start, done, until,
                                        workers, gpus, cpus, storage)
        done = until


def _segment_run_name(space: SearchSpace, trial_id: str, done: int, lineage, cfg) -> str:
    """A deterministic Ray Train run name, unique per (state it starts from, config): a trial that
    exploits a donor's state (or the same state twice with new values) must not resume a run of
    its own with the same start epoch, and a restarted driver must find the run it interrupted."""
    import hashlib

    key = json.dumps([lineage, to_dict(cfg)], sort_keys=True, default=str)
    return f"{space.name}-{trial_id}-from{done:04d}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _train_segment(space, cfg, segments, lineage, start, done: int, until: int, workers: int,
                   gpus: float, cpus: float, storage: str):
    """Train epochs done+1..until from `start`; report them to Tune with a checkpoint; return
    (the Train checkpoint, the lineage of its state)."""
    import tempfile

    import ray.tune

    from adr_scale.config import with_values
    from adr_scale.ray_adapter import make_trainer

    cfg = with_values(cfg, {"adr.segments": segments})  # [[fraction, tau0, tau1, l0, l1], ...]
    trial_id = ray.tune.get_context().get_trial_id()
    name = _segment_run_name(space, trial_id, done, lineage, cfg)
    result = make_trainer(
        {"config": to_dict(cfg), "init_checkpoint": start, "until_epoch": until},
        name=name, storage=storage, workers=workers,
        gpus=gpus, cpus=cpus, max_failures=IN_TRIAL_RESTARTS).fit()
    lineage = [*lineage, {"trial": trial_id, "from": done, "until": until, "run": name}]
    with result.checkpoint.as_directory() as src, tempfile.TemporaryDirectory() as dst:
        write_segment_files(Path(src), Path(dst), segments, until, lineage)
        metrics = {k: v for k, v in result.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(dst))
    return result.checkpoint, lineage



def run_confirm_trial(config: dict[str, Any], *, space: SearchSpace,
                      candidates: dict[str, dict[str, Any]], workers: int, gpus: float,
                      cpus: float, storage: str) -> None:
    """One full-length run of the confirmation stage, config["run"] = [candidate, seed], on Ray
    Train; TuneReportCallback forwards its epochs to Tune; its end is recorded in storage."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from adr_scale.ray_adapter import make_trainer
    from adr_scale.search.confirm import run_name

    name, seed = config["run"]
    cfg = space.long_run_config(candidates[name], seed=seed)
    run = run_name(space, name, seed)
    make_trainer({"config": to_dict(cfg)}, name=run, storage=storage,
                 workers=workers, gpus=gpus, cpus=cpus, max_failures=IN_TRIAL_RESTARTS,
                 callbacks=[TuneReportCallback()]).fit()
    mark_finished(storage, run, {"candidate": name, "seed": seed})
