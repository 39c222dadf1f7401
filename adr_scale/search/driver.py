"""`python -m adr_scale.tune`: search ADR's tau / lambda annealing ranges with Ray Tune + Optuna.

Every trial is a Ray Train run of the same training code as `adr_scale.train`
(`ray_adapter.make_trainer`, with TuneReportCallback, as Ray 2.60 requires); Optuna (TPE or
random, in a SQLite or PostgreSQL study) proposes the ranges; successive halving (synchronous)
or ASHA stops weak trials early, or PBT learns a schedule. The objective is validation PGD
robust accuracy (`objective: pareto` adds clean accuracy); the test set is never used.

Examples:
  python -m adr_scale.tune --space search_spaces/smoke.yaml --out runs/search-smoke
  python -m adr_scale.tune --space search_spaces/custom.yaml --set data.root=/data/mine \\
      --set attack.eps=0.1                       # your own data: no file editing
  python -m adr_scale.tune --space search_spaces/cifar100.yaml --address auto --workers-per-trial 1 \\
      --gpus-per-worker 1 --max-concurrent 8 --storage-path s3://bucket/adr \\
      --optuna-storage postgresql://user@db/optuna --out runs/search-c100
  python -m adr_scale.train --from-search runs/search-c100 --workers 8 --gpus-per-worker 1 \\
      --out runs/c100-long                                    # the long run with the best schedule

Output in --out: best.yaml (full-length train config), results.parquet, report.md with PNG plots,
optuna.db. Rerunning the same command (or adding --resume) continues a killed search without
losing a finished trial.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from adr_scale.cli import OneLineParser, check_address
from adr_scale.config import ConfigError, attack_line, to_dict
from adr_scale.interrupt import Interrupted, StopSignals
from adr_scale.run.files import (
    is_finished,
    latest_run,
    mark_finished,
    read_lineage,
    read_segments,
    write_segment_files,
)
from adr_scale.run.lock import RunLock
from adr_scale.search.space import (
    CLEAN_METRIC,
    METRIC,
    DefineByRun,
    SearchSpace,
    load_space,
    rung_milestones,
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m adr_scale.tune", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="search_spaces/smoke.yaml",
                        help="search space YAML (default: search_spaces/smoke.yaml)")
    parser.add_argument("--out", help="output directory (default: runs/search-<space name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE",
                        help="a config field for every trial, confirmation run and best.yaml "
                        "(repeatable), as in train: e.g. --set data.root=/data/mine; a field "
                        "the space searches is refused")
    parser.add_argument("--num-samples", type=int, help="trials (default: the space's)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's)")
    parser.add_argument("--workers-per-trial", type=int, default=1,
                        help="Ray Train workers (DDP ranks) per trial")
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--address", help="join a running Ray cluster; default: start a local Ray")
    parser.add_argument("--storage-path", help="Tune/Train storage: local dir, s3://, gs:// "
                        "(default: OUT/ray)")
    parser.add_argument("--optuna-storage", help="Optuna RDB URL (default: sqlite:///OUT/optuna.db;"
                        " PostgreSQL on a cluster); readable by optuna-dashboard")
    parser.add_argument("--max-failures", type=int, default=1,
                        help="restarts of a failed trial (or confirmation run) before it errors; "
                        "a restart relaunches its Ray Train run, which resumes from its latest "
                        "checkpoint")
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed search (the same command without it does too)")
    return parser


# ---------------------------------------------------------------------------------------------
# One trial (runs in a Tune trial actor)

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
    rungs = (rung_milestones(space.epochs, space.grace_period, space.reduction_factor)
             if space.scheduler == "halving" and not reference else [])
    return [*rungs, space.epochs]


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
    segments = [s for s in segments if s[0] < done / space.epochs]
    if not segments or segments[-1][1:] != current:
        segments.append([done / space.epochs, *current])
    while done < space.epochs:
        until = min(done + space.perturbation_interval, space.epochs)
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


def _pbt_domain(p):
    from ray import tune

    if p.distribution == "categorical":
        return tune.choice(list(p.choices))
    if p.distribution == "int":
        return tune.randint(int(p.low), int(p.high) + 1)
    if p.distribution == "loguniform":
        return tune.loguniform(p.low, p.high)
    return tune.uniform(p.low, p.high)


# ---------------------------------------------------------------------------------------------
# The driver


def _searcher(space: SearchSpace, optuna_url: str, max_concurrent: int | None,
              num_samples: int):
    """Optuna's searcher, behind a ConcurrencyLimiter of `max_concurrent` (None: no limiter),
    inside the SearchGenerator that reconciles a restored search."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if space.objective == "pareto":
        metric, mode = [METRIC, CLEAN_METRIC], ["max", "max"]
    else:
        metric, mode = METRIC, "max"
    points = _first_points(space, num_samples)
    sampler = (optuna.samplers.RandomSampler(seed=space.seed) if space.sampler == "random"
               else optuna.samplers.TPESampler(seed=space.seed,  # TPE after the start-up points
                                               n_startup_trials=max(len(points or []), 1)))
    searcher = OptunaSearch(
        space=DefineByRun(space), metric=metric, mode=mode, sampler=sampler,
        points_to_evaluate=points, study_name=space.name,
        storage=optuna.storages.RDBStorage(optuna_url))
    from adr_scale.search.resume import ResumableSearch

    if max_concurrent is not None:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    return ResumableSearch(searcher)


def _first_points(space: SearchSpace, num_samples: int = 0) -> list[dict[str, Any]] | None:
    """The references (the paper's schedule, plain AT) or the warm start, evaluated first; then,
    under TPE, the start-up points (`startup_count`) from a scrambled Sobol sequence."""
    points = list(space.reference_points().values()) or (
        [space.warm_start_params()] if space.warm_start else [])
    n = space.startup_count(num_samples)
    points += space.startup_points(n, space.startup_seed()) if n else []
    return points or None




def _scheduler(space: SearchSpace, num_samples: int = 0, state_dir: Path | None = None):
    from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining

    if space.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="epoch", metric=METRIC, mode="max",
            perturbation_interval=space.perturbation_interval,
            quantile_fraction=space.quantile_fraction, synch=space.synch,
            hyperparam_mutations={p.name: _pbt_domain(p) for p in space.params})
    if space.scheduler not in ("asha", "halving"):
        return FIFOScheduler()
    from adr_scale.search.schedulers import (
        ASHA_STATE,
        HALVING_STATE,
        ResumableASHA,
        SuccessiveHalving,
    )

    refs = min(len(space.reference_points()), num_samples)  # never stopped: not in the bracket
    state_file, make = {
        "asha": (ASHA_STATE, lambda path: ResumableASHA(
            state_path=path, time_attr="epoch", metric=METRIC, mode="max", max_t=space.epochs,
            grace_period=space.grace_period, reduction_factor=space.reduction_factor,
            reference_of=space.reference_of_params)),
        "halving": (HALVING_STATE, lambda path: SuccessiveHalving(
            metric=METRIC, max_t=space.epochs, bracket=num_samples - refs,
            grace_period=space.grace_period, reduction_factor=space.reduction_factor,
            state_path=path, reference_of=space.reference_of_params)),
    }[space.scheduler]
    path = Path(state_dir or ".") / state_file
    path.unlink(missing_ok=True)  # a new search: rung records of an old one do not apply
    return make(str(path))


def _tuner_setup(space: SearchSpace, optuna_url: str, num_samples: int, max_concurrent: int,
                 state_dir: Path | None = None) -> dict[str, Any]:
    """Optuna proposes the trials, except under PBT, which mutates a population itself (Tune
    refuses PBT beside a search algorithm): then Tune samples the space and warm-starts it.
    Successive halving pauses trials at its rungs: a ConcurrencyLimiter would count them as
    running and never propose the rest of the bracket, so there the trials at once are bounded
    by a custom resource instead (`_bounded`)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    if space.scheduler == "pbt":
        return {"param_space": {p.name: _pbt_domain(p) for p in space.params},
                "tune_config": tune.TuneConfig(
                    search_alg=BasicVariantGenerator(points_to_evaluate=_first_points(space),
                                                     max_concurrent=max_concurrent),
                    scheduler=_scheduler(space), num_samples=num_samples)}
    searcher = _searcher(space, optuna_url,  # halving: no ConcurrencyLimiter (see above)
                         None if space.scheduler == "halving" else max_concurrent, num_samples)
    return {"tune_config": tune.TuneConfig(
        search_alg=searcher, scheduler=_scheduler(space, num_samples, state_dir),
        num_samples=num_samples)}


SEARCH_SLOT = "adr_search_trial"  # a custom Ray resource: one per search trial at once


def _bounded(space: SearchSpace, trainable):
    """Under halving no ConcurrencyLimiter bounds the trials at once (it would count the paused
    ones and stop proposing): each trial then also takes one of the `SEARCH_SLOT`s that a local
    Ray gets (`max_concurrent` of them) and that a paused trial gives back. Unbounded, Tune
    starts a trial actor per free CPU and their Train workers wait for a CPU forever. On a
    cluster, `ray start --resources='{"adr_search_trial": N}'` on one node bounds it the same way."""
    import ray
    from ray import tune

    if space.scheduler != "halving" or not ray.cluster_resources().get(SEARCH_SLOT):
        return trainable
    return tune.with_resources(trainable, {"CPU": 1, SEARCH_SLOT: 1})


def with_overrides(space: SearchSpace, overrides: list[str]) -> SearchSpace:
    """The space with `--set FIELD=VALUE` added to its fixed fields (every trial, confirmation
    run and best.yaml), checked as train checks them; a searched field cannot be fixed."""
    import dataclasses

    from adr_scale.config import apply_overrides, get_preset, parse_override, parse_value

    if not overrides:
        return space
    apply_overrides(get_preset(space.base), overrides)  # unknown fields and bad values: one line
    fixed = dict(space.fixed)
    searched = {p.field for p in space.params}
    for item in overrides:
        key, value = parse_override(item)
        if key in searched:
            raise ConfigError(f"--set: {key} is searched by {space.source}; allowed: a field the "
                              f"space does not search (it searches {', '.join(sorted(searched))})")
        fixed[key] = parse_value(key, value)
    space = dataclasses.replace(space, fixed=fixed)
    space.example_config()  # valid together
    return space


def check_args(args: argparse.Namespace, space: SearchSpace) -> tuple[int, int]:
    num = args.num_samples if args.num_samples is not None else space.num_samples
    conc = args.max_concurrent if args.max_concurrent is not None else space.max_concurrent
    for flag, value in (("--num-samples", num), ("--max-concurrent", conc),
                        ("--workers-per-trial", args.workers_per_trial)):
        if value < 1:
            raise ConfigError(f"{flag}: invalid value {value}; allowed: an integer >= 1")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures: invalid value {args.max_failures}; "
                          "allowed: an integer >= 0")
    refs = len(space.reference_points())
    if refs and num < refs + 1:
        raise ConfigError(f"--num-samples: invalid value {num}; allowed: an integer >= {refs + 1} "
                          f"(the {refs} references, run in every search, and at least one "
                          "searched point)")
    batch = space.example_config().train.batch_size
    if batch % args.workers_per_trial:
        raise ConfigError(f"--workers-per-trial: {args.workers_per_trial} does not divide "
                          f"train.batch_size={batch}")
    return num, conc


def run_search(space: SearchSpace, out: Path, *, num_samples: int, max_concurrent: int,
               workers: int = 1, gpus: float = 0, cpus: float = 1, address: str | None = None,
               storage_path: str | None = None, optuna_storage: str | None = None,
               resume: bool = False, max_failures: int = 1,
               stop: StopSignals | None = None) -> dict[str, Any]:
    """Run (or resume) the search and write best.yaml, results.parquet and report.md to `out`,
    then the confirmation. A stop signal (`stop`) ends the running stage with Tune's state saved
    and raises `Interrupted`: nothing is written that claims the stage finished."""
    import ray
    from ray import tune

    stop = stop or StopSignals()
    out = out.resolve()
    storage = storage_path or str(out / "ray")
    experiment = f"{storage.rstrip('/')}/{space.name}"
    optuna_url = optuna_storage or f"sqlite:///{out / 'optuna.db'}"
    restoring = tune.Tuner.can_restore(experiment)
    if resume and not restoring:  # refuse before starting Ray
        raise ConfigError(f"--resume: no search to resume in {experiment!r}")
    if address:  # nothing answering there: one line now, not Ray's retries for minutes
        check_address(address)
    print(attack_line(space.example_config()))
    record = _space_record(space, num_samples)
    if restoring:  # the same search, or a change that is safe to make mid-way
        _check_same_space(out / "space.json", record)
    _check_study(optuna_url, space.name, fresh=not restoring and space.scheduler != "pbt",
                 flag="--optuna-storage" if optuna_storage else f"{out / 'optuna.db'}")
    if not restoring:  # written before Ray starts: a full --out is one line, not a Ray traceback
        from adr_scale.run.directory import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "space.json", json.dumps(record, indent=2) + "\n")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # our StopSignals asks Tune to stop
    if not ray.is_initialized():
        at_once = max(max_concurrent, space.confirm_concurrent or 0)  # search or confirmation
        if address:
            ray.init(address=address)
        else:
            from adr_scale.ray_adapter import start_local_ray

            start_local_ray(max(os.cpu_count() or 1, at_once * (1 + math.ceil(workers * cpus))),
                            resources={SEARCH_SLOT: max_concurrent})
    trial_fn = run_pbt_trial if space.scheduler == "pbt" else run_trial
    trainable = _bounded(space, tune.with_parameters(
        trial_fn, space=space, workers=workers, gpus=gpus, cpus=cpus, storage=storage))
    if restoring:
        print(f"resuming the search in {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        setup = _tuner_setup(space, optuna_url, num_samples, max_concurrent, state_dir=out)
        from adr_scale.search.resume import WaitReport

        tuner = tune.Tuner(trainable, **setup, run_config=tune.RunConfig(
            name=space.name, storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[WaitReport(getattr(setup["tune_config"], "search_alg", None))]))
    grid = _fit(tuner, stop)
    statuses = {t.trial_id: t.status for t in grid._experiment_analysis.trials}
    if stop.received:
        done = sum(status in ("TERMINATED", "ERROR") for status in statuses.values())
        raise Interrupted(stop.received, f"{done} of {num_samples} search trials finished, "
                          "no confirmation started")
    from adr_scale.search.report import write_search_outputs

    result = write_search_outputs(space, grid, out, optuna_url, storage, statuses)
    if result and space.confirm_top_k > 0 and space.scheduler != "pbt":  # PBT: see the README
        result["confirmed"] = run_confirmation(
            space, result["ranked"], out, workers=workers,
            max_concurrent=space.confirm_concurrent or max_concurrent,
            gpus=gpus, cpus=cpus, storage=storage, max_failures=max_failures, stop=stop)
    return result


def _fit(tuner, stop: StopSignals):
    """tuner.fit(), where the first stop signal asks Tune to end the stage gracefully (Tune's own
    SIGUSR1 handler, installed by fit, stops the trials and saves the experiment state)."""
    import signal

    def ask_tune_to_stop(signum: int) -> None:
        if not callable(signal.getsignal(signal.SIGUSR1)):  # Tune's loop is not up yet
            raise Interrupted(signum)
        print(f"{signal.Signals(signum).name}: stopping the running trials and saving the "
              "search state (a second signal quits at once)", file=sys.stderr, flush=True)
        signal.raise_signal(signal.SIGUSR1)

    stop.install()  # ray.init replaced the SIGTERM handler
    with stop.graceful(ask_tune_to_stop), stop.translated():  # Ray's own KeyboardInterrupt too
        return tuner.fit()


def _check_same_space(path: Path, record: dict[str, Any]) -> None:
    """Refuse to resume a search whose space changed in a field that decides what a trial is;
    say which safe fields (the confirmation, trials at once) changed."""
    if not path.exists():
        return  # a search started before space.json was compared
    saved = json.loads(path.read_text())
    changed = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
    unsafe = [k for k in changed if k not in RESUMABLE_CHANGES]
    if unsafe:
        key = unsafe[0]
        raise ConfigError(
            f"{key}: {record.get(key)!r} now, {saved.get(key)!r} in the search being resumed "
            f"({path}); allowed: the same space (changing {', '.join(unsafe)} would mix "
            "incomparable trials), or a new --out for a new search")
    for key in changed:
        print(f"resume: {key} changed from {saved.get(key)!r} to {record.get(key)!r}; applied")


RESUMABLE_CHANGES = ("confirm_top_k", "confirm_mode", "confirm_seeds", "confirm_min_seeds",
                     "confirm_alpha", "confirm_concurrent", "max_concurrent", "note",
                     )  # fields a resumed search may change: not what a trial trains


def _check_study(url: str, name: str, *, fresh: bool, flag: str) -> None:
    """One line for an Optuna storage that cannot be read, or (for a new search) that already
    holds a study of this name: its trials belong to a search whose Tune state is gone."""
    import optuna

    try:
        names = optuna.study.get_all_study_names(storage=optuna.storages.RDBStorage(url))
    except Exception as exc:  # sqlalchemy's errors for a garbage or truncated file, a bad URL
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{flag}: not a readable Optuna database ({first[:160]}); allowed: a "
                          "new file or an intact one (move it away to start over)") from None
    if fresh and name in names:
        raise ConfigError(f"{flag}: holds study {name!r} of an earlier search whose Tune state "
                          "is gone; allowed: the search's own --out with its ray/ folder to "
                          "resume, or a new --out (or remove that study) to start over")


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


def run_confirmation(space: SearchSpace, ranked: list[dict[str, Any]], out: Path, *,
                     max_concurrent: int, workers: int, gpus: float, cpus: float, storage: str,
                     max_failures: int = 1, stop: StopSignals | None = None) -> list[Any]:
    """Train the top_k schedules, the paper's and plain AT at full length, as a race over seeds
    (`confirm.mode: race`: `confirm.plan_race`) or every candidate on every seed (`grid`), each
    round's runs `max_concurrent` at once; then best.yaml becomes the winner and report.md gets
    the comparison. Each run is a Ray Train run with a fixed name that records its end, and the
    race is replayed from the finished runs: a rerun trains only what is missing (an unfinished
    run resumes from its latest checkpoint), so an interrupt anywhere, or a changed confirm block,
    resumes with the same command. Raises `Interrupted` on a stop signal and
    `ConfirmationIncomplete` when a run failed; the winner is written only once decided."""
    import time

    from adr_scale.run.files import latest_history
    from adr_scale.search.confirm import (
        pick_candidates,
        rank_correlation,
        report_section,
        run_name,
        summarise,
        write_winner,
    )

    stop = stop or StopSignals()
    candidates = pick_candidates(space, ranked)
    base_seed = space.long_run_config(candidates[0].params).seed
    seeds = space.confirm_seed_list(base_seed)
    print(f"confirming {len(candidates)} schedules ({', '.join(c.name for c in candidates)}) at "
          f"full length: " + (f"a race over seeds {seeds} (at least {space.confirm_min_seeds} "
                              f"each, alpha {space.confirm_alpha:g})" if space.confirm_mode == "race"
                              else f"seeds {seeds}, {len(candidates) * len(seeds)} runs"))
    start = time.monotonic()
    while True:
        race = _race(space, candidates, seeds, storage)
        if race.decided:
            break
        _run_round(space, candidates, race.pending, race.rounds, max_concurrent=max_concurrent,
                   workers=workers, gpus=gpus, cpus=cpus, storage=storage,
                   max_failures=max_failures, stop=stop)
    runs = race.runs(seeds)
    rows = summarise(candidates, seeds, {r: latest_history(storage, run_name(space, *r))
                                         for r in runs}, winner=race.active[0])
    write_winner(out / "best.yaml", space, rows[0], base_seed)
    section = report_section(space, rows, rank_correlation(rows), out, time.monotonic() - start,
                             race=race, seeds=seeds)
    report = out / "report.md"
    text = report.read_text() if report.exists() else ""
    # the search's own "Next" (best trial -> best.yaml) no longer holds: the section says what does
    text = text.split("## Confirmation at full length")[0].split("## Next")[0].rstrip()
    text += "\n\n" + section
    from adr_scale.run.directory import atomic_write_text

    atomic_write_text(report, text)
    return rows


def _race(space: SearchSpace, candidates, seeds: list[int], storage: str):
    """The race (or grid) replayed from the finished confirmation runs."""
    from adr_scale.run.files import latest_history
    from adr_scale.search.confirm import full_length_score, plan_race, run_name

    scores = {}
    for c in candidates:
        for s in seeds:
            name = run_name(space, c.name, s)
            if is_finished(storage, name):
                scores[(c.name, s)] = full_length_score(latest_history(storage, name))[0]
    grid = space.confirm_mode == "grid"
    return plan_race([c.name for c in candidates], seeds, scores,
                     min_seeds=len(seeds) if grid else space.confirm_min_seeds,
                     alpha=0.0 if grid else space.confirm_alpha)


def _run_round(space: SearchSpace, candidates, pending: list[tuple[str, int]], rounds: int, *,
               max_concurrent: int, workers: int, gpus: float, cpus: float, storage: str,
               max_failures: int, stop: StopSignals) -> None:
    """Train one round's runs (a Tune grid, `max_concurrent` at once); raise `Interrupted` on a
    stop signal, `ConfirmationIncomplete` if a run did not finish."""
    from ray import tune

    from adr_scale.search.confirm import run_name

    print(f"confirmation round {rounds + 1}: {len(pending)} full-length runs "
          f"({', '.join(f'{c} seed {s}' for c, s in pending)})", flush=True)
    trainable = tune.with_parameters(
        run_confirm_trial, space=space, candidates={c.name: c.params for c in candidates},
        workers=workers, gpus=gpus, cpus=cpus, storage=storage)
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search([list(r) for r in pending])},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=f"{space.name}-confirm", storage_path=storage,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)))
    _fit(tuner, stop)
    unfinished = [r for r in pending if not is_finished(storage, run_name(space, *r))]
    if stop.received:
        raise Interrupted(stop.received, f"{len(pending) - len(unfinished)} of {len(pending)} "
                          f"runs of confirmation round {rounds + 1} finished, no winner written")
    if unfinished:
        raise ConfirmationIncomplete(
            f"{len(unfinished)} of {len(pending)} confirmation runs failed "
            f"({', '.join(f'{c} seed {s}' for c, s in unfinished)}; see the Ray Tune output "
            "above); no winner written; rerun the same command to retry them")


class ConfirmationIncomplete(RuntimeError):
    """A confirmation run failed (after its retries): no winner can be named."""


def _space_record(space: SearchSpace, num_samples: int) -> dict[str, Any]:
    """The space as a resumed search compares it (JSON values: what space.json holds)."""
    import dataclasses

    record = dataclasses.asdict(space) | {"num_samples": num_samples}
    del record["source"]  # where the file lies: a copy of the same space resumes too
    return json.loads(json.dumps(record, default=str))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with StopSignals() as stop:
        try:
            space = with_overrides(load_space(args.space), args.overrides)
            num, conc = check_args(args, space)
            out = Path(args.out or f"runs/search-{space.name}")
            with RunLock(out):  # one search per output directory; a file or read-only --out fails here
                best = run_search(space, out, num_samples=num, max_concurrent=conc,
                                  workers=args.workers_per_trial, gpus=args.gpus_per_worker,
                                  cpus=args.cpus_per_worker, address=args.address,
                                  storage_path=args.storage_path,
                                  optuna_storage=args.optuna_storage, resume=args.resume,
                                  max_failures=args.max_failures, stop=stop)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except ConfirmationIncomplete as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Interrupted as exc:
            print(f"interrupted ({exc}): {exc.detail or 'stopped while shutting down'}; rerun the "
                  "same command to resume", file=sys.stderr, flush=True)
            return exc.exit_code
    if not best:
        print("error: no trial finished; see the Ray Tune output above", file=sys.stderr)
        return 1
    import ray

    if ray.is_initialized():  # the workers' forwarded log lines end here, before the answer
        ray.shutdown()
    print_answer(best, out, space)
    return 0


def print_answer(best: dict[str, Any], out: Path, space: SearchSpace) -> None:
    """The search's answer, last: the best trial, each confirmed schedule, the winner."""
    top = best["best"]
    fields = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in top["fields"].items())
    print(f"best trial {top['trial_id']}: val robust {top[METRIC]:.4f}, clean "
          f"{top[CLEAN_METRIC]:.4f} after {top['epochs']} epochs; {fields}")
    for row in best.get("confirmed") or []:
        print(f"  full length {row.candidate.name:9s} val robust {row.robust} %, clean "
              f"{row.clean} % (seeds {row.seeds})")
    print(f"report: {out / 'report.md'}\nthe long run with this schedule:\n"
          f"  python -m adr_scale.train --from-search {out} --out runs/{space.name}-long")
    if best.get("confirmed"):
        from adr_scale.search.confirm import verdict

        win = best["confirmed"][0]
        print(f"confirmed winner: {win.candidate.name} (best.yaml)")
        for ref, test in (("AT", win.vs_at), ("paper", win.vs_paper)):
            if ref != win.candidate.name:
                print(f"  {verdict(win.candidate.name, ref, test, space.confirm_alpha)}")
    if space.note:
        print(space.note)


if __name__ == "__main__":
    sys.exit(main())
