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

from adr_scale.cli import check_address, entry_parser
from adr_scale.config import ConfigError, attack_line
from adr_scale.interrupt import Interrupted, StopSignals, fit_tuner
from adr_scale.run.lock import RunLock
from adr_scale.search.confirmation import ConfirmationIncomplete, run_confirmation
from adr_scale.search.space import (
    CLEAN_METRIC,
    METRIC,
    DefineByRun,
    SearchSpace,
    load_space,
)
from adr_scale.search.trial import run_pbt_trial, run_trial


def build_parser() -> argparse.ArgumentParser:
    # --help's epilog starts at the examples: the second paragraph (what a trial is) is left out
    parser = entry_parser("python -m adr_scale.tune", __doc__, epilog_from=2)
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


def _pbt_domain(p):
    from ray import tune

    if p.distribution == "categorical":
        return tune.choice(list(p.choices))
    if p.distribution == "int":
        return tune.randint(int(p.low), int(p.high) + 1)
    if p.distribution == "loguniform":
        return tune.loguniform(p.low, p.high)
    return tune.uniform(p.low, p.high)


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
    seed = space.sampler.seed
    sampler = (optuna.samplers.RandomSampler(seed=seed) if space.sampler.type == "random"
               else optuna.samplers.TPESampler(seed=seed,  # TPE after the start-up points
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

    if space.scheduler.type == "pbt":
        return PopulationBasedTraining(
            time_attr="epoch", metric=METRIC, mode="max",
            perturbation_interval=space.scheduler.perturbation_interval,
            quantile_fraction=space.scheduler.quantile_fraction, synch=space.scheduler.synch,
            hyperparam_mutations={p.name: _pbt_domain(p) for p in space.params})
    if space.scheduler.type not in ("asha", "halving"):
        return FIFOScheduler()
    from adr_scale.search.schedulers import (
        ASHA_STATE,
        HALVING_STATE,
        ResumableASHA,
        SuccessiveHalving,
    )

    refs = min(len(space.reference_points()), num_samples)  # never stopped: not in the bracket
    sched, epochs = space.scheduler, space.budget.epochs
    state_file, make = {
        "asha": (ASHA_STATE, lambda path: ResumableASHA(
            state_path=path, time_attr="epoch", metric=METRIC, mode="max", max_t=epochs,
            grace_period=sched.grace_period, reduction_factor=sched.reduction_factor,
            reference_of=space.reference_of_params)),
        "halving": (HALVING_STATE, lambda path: SuccessiveHalving(
            metric=METRIC, max_t=epochs, bracket=num_samples - refs,
            grace_period=sched.grace_period, reduction_factor=sched.reduction_factor,
            state_path=path, reference_of=space.reference_of_params)),
    }[sched.type]
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

    if space.scheduler.type == "pbt":
        return {"param_space": {p.name: _pbt_domain(p) for p in space.params},
                "tune_config": tune.TuneConfig(
                    search_alg=BasicVariantGenerator(points_to_evaluate=_first_points(space),
                                                     max_concurrent=max_concurrent),
                    scheduler=_scheduler(space), num_samples=num_samples)}
    searcher = _searcher(space, optuna_url,  # halving: no ConcurrencyLimiter (see above)
                         None if space.scheduler.type == "halving" else max_concurrent, num_samples)
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

    if space.scheduler.type != "halving" or not ray.cluster_resources().get(SEARCH_SLOT):
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
    _check_study(optuna_url, space.name, fresh=not restoring and space.scheduler.type != "pbt",
                 flag="--optuna-storage" if optuna_storage else f"{out / 'optuna.db'}")
    if not restoring:  # written before Ray starts: a full --out is one line, not a Ray traceback
        from adr_scale.run.directory import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "space.json", json.dumps(record, indent=2) + "\n")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # our StopSignals asks Tune to stop
    if not ray.is_initialized():
        at_once = max(max_concurrent, space.confirm.max_concurrent or 0)  # search or confirmation
        if address:
            ray.init(address=address)
        else:
            from adr_scale.ray_adapter import start_local_ray

            start_local_ray(max(os.cpu_count() or 1, at_once * (1 + math.ceil(workers * cpus))),
                            resources={SEARCH_SLOT: max_concurrent})
    trial_fn = run_pbt_trial if space.scheduler.type == "pbt" else run_trial
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
    grid = fit_tuner(tuner, stop)
    statuses = {t.trial_id: t.status for t in grid._experiment_analysis.trials}
    if stop.received:
        done = sum(status in ("TERMINATED", "ERROR") for status in statuses.values())
        raise Interrupted(stop.received, f"{done} of {num_samples} search trials finished, "
                          "no confirmation started")
    from adr_scale.search.report import write_search_outputs

    result = write_search_outputs(space, grid, out, optuna_url, storage, statuses)
    if result and space.confirm.top_k > 0 and space.scheduler.type != "pbt":  # PBT: see the README
        result["confirmed"] = run_confirmation(
            space, result["ranked"], out, workers=workers,
            max_concurrent=space.confirm.max_concurrent or max_concurrent,
            gpus=gpus, cpus=cpus, storage=storage, max_failures=max_failures, stop=stop)
    return result


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


def _space_record(space: SearchSpace, num_samples: int) -> dict[str, Any]:
    """The space as a resumed search compares it (JSON values: what space.json holds); not
    where the file lies: a copy of the same space resumes too."""
    record = space.record() | {"num_samples": num_samples}
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
                print(f"  {verdict(win.candidate.name, ref, test, space.confirm.alpha)}")
    if space.note:
        print(space.note)


if __name__ == "__main__":
    sys.exit(main())
