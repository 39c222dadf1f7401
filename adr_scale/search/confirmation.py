"""The confirmation stage: the top schedules, the paper's and plain AT retrained at full length
over seeds, one Tune grid of `trial.run_confirm_trial` per round of the race, replayed from the
finished runs. The race's bookkeeping (candidates, `plan_race`, summaries, the winner) is Ray-free
in `search.confirm`; this module runs it on Ray Tune.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adr_scale.interrupt import Interrupted, StopSignals, fit_tuner
from adr_scale.run.files import is_finished
from adr_scale.search.space import SearchSpace
from adr_scale.search.trial import run_confirm_trial


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
    conf = space.confirm
    print(f"confirming {len(candidates)} schedules ({', '.join(c.name for c in candidates)}) at "
          f"full length: " + (f"a race over seeds {seeds} (at least {conf.min_seeds} "
                              f"each, alpha {conf.alpha:g})" if conf.mode == "race"
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
    grid = space.confirm.mode == "grid"
    return plan_race([c.name for c in candidates], seeds, scores,
                     min_seeds=len(seeds) if grid else space.confirm.min_seeds,
                     alpha=0.0 if grid else space.confirm.alpha)


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
    fit_tuner(tuner, stop)
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
