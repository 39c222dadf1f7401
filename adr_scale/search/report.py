"""A finished (or resumed) search's outputs: results.parquet, best.yaml, report.md and PNG plots."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from adr_scale.config import dump_yaml, format_segments
from adr_scale.run.directory import atomic_write_text
from adr_scale.run.files import latest_history, tune_checkpoint_files
from adr_scale.schedules import adr_schedule
from adr_scale.search.space import CLEAN_METRIC, METRIC, SearchSpace

ROW_METRICS = ("epoch", "step", "train_loss", "lr", "tau", "lambda", METRIC, CLEAN_METRIC,
               "val_robust_acc_student", "val_clean_acc_student", "val_robust_acc_ema",
               "val_clean_acc_ema", "seconds")


def _trial_id_of(trial_path: str) -> str:
    """Tune's trial id from its folder name (`run_trial_<id>_<index>_<params>_<date>`)."""
    name = Path(trial_path).name
    parts = name.split("_")
    return parts[2] if name.startswith("run_trial_") and len(parts) > 2 else name


def _saved_params(trial_path: str) -> dict[str, Any]:
    """The trial's config as Tune wrote it beside its results (params.json), {} if absent."""
    try:
        return json.loads((Path(trial_path) / "params.json").read_text())
    except (OSError, ValueError):
        return {}


def trial_status(space: SearchSpace, tune_status: str | None, error: bool, epochs: int) -> str:
    """What happened to a trial, in words: completed, stopped early by the scheduler, failed,
    interrupted (running when the search was stopped) or pending (never started)."""
    if error or tune_status == "ERROR":
        return "failed"
    if tune_status in ("RUNNING", "PAUSED"):
        return "interrupted"
    if tune_status == "PENDING":
        return "pending"
    if epochs >= space.budget.epochs:
        return "completed"
    if space.scheduler.type in ("asha", "halving", "pbt"):
        return f"stopped early by {space.scheduler.type.upper()}"
    return "ended early"  # no scheduler stops a trial: its Train run ended before the budget


def collect_trials(space: SearchSpace, grid, storage: str,
                   statuses: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One dict per trial: id, status (`trial_status`, from Tune's status where `statuses`
    gives it), sampled fields and its per-epoch rows.

    The rows come from the trial's own Ray Train checkpoint (history.json), which survives a killed
    driver intact; Tune's per-trial logs are the fallback.
    """
    trials = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or _trial_id_of(result.path)
        config = result.config or _saved_params(result.path)  # None: no result since a restore
        params = {p.name: config[p.name] for p in space.params if p.name in config}
        saved = tune_checkpoint_files(result.checkpoint)  # PBT trials report Tune checkpoints
        rows = (saved.get("history") or latest_history(storage, f"{space.name}-{trial_id}")
                or _tune_rows(result))
        rows = [{k: r[k] for k in ROW_METRICS if k in r} for r in rows]
        epochs = rows[-1]["epoch"] if rows else 0
        status = trial_status(space, (statuses or {}).get(trial_id), bool(result.error), epochs)
        fields = space.field_values(params) if len(params) == len(space.params) else {}
        trials.append({
            "trial_id": trial_id, "status": status, "params": params, "fields": fields,
            "reference": space.reference_of(fields) if fields else None,
            "rows": rows, "epochs": epochs,
            "segments": saved.get("segments", {}).get("segments", []),
            METRIC: rows[-1].get(METRIC, math.nan) if rows else math.nan,
            CLEAN_METRIC: rows[-1].get(CLEAN_METRIC, math.nan) if rows else math.nan})
    return sorted(trials, key=lambda t: t["trial_id"])


def run_config_of(space: SearchSpace, trial: dict[str, Any], *, long_run: bool):
    """The trial's config (search fidelity or full length), with its learned PBT schedule."""
    from adr_scale.config import with_values

    cfg = (space.long_run_config if long_run else space.trial_config)(trial["params"])
    if trial.get("segments"):  # [[fraction, tau0, tau1, lambda0, lambda1], ...] (segments.json)
        cfg = with_values(cfg, {"adr.segments": trial["segments"]})
    return cfg


def _tune_rows(result) -> list[dict[str, Any]]:
    df = result.metrics_dataframe
    if df is None or "epoch" not in df:
        return []
    return [{k: _plain(v) for k, v in r.items() if not _missing(v)}
            for r in df.sort_values("epoch").to_dict("records")]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pareto_front(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials no other trial beats on both validation robust and clean accuracy."""
    def dominated(t):
        return any(o[METRIC] >= t[METRIC] and o[CLEAN_METRIC] >= t[CLEAN_METRIC]
                   and (o[METRIC], o[CLEAN_METRIC]) != (t[METRIC], t[CLEAN_METRIC]) for o in trials)
    return sorted((t for t in trials if not dominated(t)), key=lambda t: -t[METRIC])


def rank_trials(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first by final validation robust accuracy (clean accuracy breaks ties)."""
    scored = [t for t in trials if t["rows"] and t["fields"] and not math.isnan(t[METRIC])]
    return sorted(scored, key=lambda t: (-t[METRIC], -t[CLEAN_METRIC], t["trial_id"]))


def write_results_parquet(path: Path, trials: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = []
    for t in trials:
        base = {"trial_id": t["trial_id"], "status": t["status"], "reference": t.get("reference"),
                **t["fields"]}
        records += [base | row for row in t["rows"]] or [base]
    columns = list(dict.fromkeys(k for r in records for k in r))  # union, first-seen order
    table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in records])
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def write_best_yaml(path: Path, space: SearchSpace, best: dict[str, Any]) -> None:
    cfg = run_config_of(space, best, long_run=True)
    learned = (f" Learned PBT schedule: adr.segments={format_segments(cfg.adr.segments)}."
               if cfg.adr.segments else "")
    header = (f"# Best schedule of search '{space.name}' ({space.source}): trial {best['trial_id']},"
              f" validation PGD robust accuracy {best[METRIC]:.4f}, clean {best[CLEAN_METRIC]:.4f}"
              f" after {best['epochs']} search epochs.{learned}\n# Full length ({cfg.train.epochs} epochs):"
              f" python -m adr_scale.train --config {path} --out runs/{space.name}-long\n")
    atomic_write_text(path, header + dump_yaml(cfg))


def plot_top_schedules(path: Path, space: SearchSpace, ranked: list[dict[str, Any]], k: int = 5,
                       ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [i / 100 for i in range(101)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for t in ranked[:k]:
        cfg = run_config_of(space, t, long_run=False)
        label = f"{t['trial_id']} ({100 * t[METRIC]:.1f} %)"
        curve = [adr_schedule(cfg.adr, round(1000 * x), 1000) for x in xs]
        axes[0].plot(xs, [tau for tau, _ in curve], label=label)
        axes[1].plot(xs, [lam for _, lam in curve], label=label)
    axes[0].set(title="tau of the top trials", xlabel="fraction of training")
    axes[1].set(title="lambda of the top trials", xlabel="fraction of training")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_study(out: Path, space: SearchSpace, optuna_url: str) -> dict[str, str]:
    """Optuna's own plots of the study; returns {file: why it was skipped} for those it could not
    draw (e.g. importances need two finished trials with different values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    skipped = {}
    study = optuna.load_study(study_name=space.name, storage=optuna_url)
    target = {} if space.objective == "robust" else {
        "target": lambda t: t.values[0], "target_name": METRIC}
    plots = {"optimization_history.png": lambda: ovm.plot_optimization_history(study, **target),
             "param_importances.png": lambda: ovm.plot_param_importances(study, **target),
             "parallel_coordinate.png": lambda: ovm.plot_parallel_coordinate(study, **target)}
    if space.objective == "pareto":
        plots["pareto_front.png"] = lambda: ovm.plot_pareto_front(
            study, target_names=[METRIC, CLEAN_METRIC])
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 4.5)
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return skipped


def _startup_note(space: SearchSpace, num_samples: int) -> str:
    n = space.startup_count(num_samples)
    return (f", its first {n} searched points from a scrambled Sobol sequence (seed "
            f"{space.startup_seed()}) instead of TPE's random start-up" if n else "")


def report_markdown(space: SearchSpace, trials, ranked, skipped: dict[str, str], out: Path) -> str:
    consumed = sum(t["epochs"] for t in trials)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    names = [p.field for p in space.params]
    how = (f"a PBT population mutating every {space.scheduler.perturbation_interval} epochs "
           "(learned schedules in best.yaml's adr.segments)" if space.scheduler.type == "pbt"
           else f"{space.sampler.type.upper()} sampler (seed {space.sampler.seed})"
           + _startup_note(space, len(trials)))
    budget = len(trials) * space.budget.epochs
    lines = [
        f"# Search '{space.name}' ({space.source})",
        "",
        f"Base preset `{space.base}`; {len(trials)} trials ({summary}); {how}; objective: validation "
        f"PGD robust accuracy{' and clean accuracy (Pareto)' if space.objective == 'pareto' else ''}"
        f". Epochs consumed: {consumed} of {budget} for running every trial "
        f"to its {space.budget.epochs}-epoch budget ({consumed / max(budget, 1):.0%}).",
        "",
        "## Top trials (final validation accuracy, %)",
        "",
        "| trial | " + " | ".join(names) + " | robust | clean | epochs | status |",
        "|---|" + "---|" * (len(names) + 4),
    ]
    for t in ranked[:10]:
        ref = f" ({t['reference']} reference)" if t.get("reference") else ""
        lines.append(f"| {t['trial_id']}{ref} | " + " | ".join(f"{t['fields'][n]:.4g}" if isinstance(
            t["fields"][n], float) else str(t["fields"][n]) for n in names)
            + f" | {100 * t[METRIC]:.2f} | {100 * t[CLEAN_METRIC]:.2f} | {t['epochs']} "
            f"| {t['status']} |")
    refs = [t for t in ranked if t.get("reference")]
    if space.references:
        lines += ["", "References, run in every search at the search budget: the paper's schedule "
                  "(the space's warm_start) and plain AT (lambda 0 -> 0, a one-hot label): "
                  + ("; ".join(f"{t['reference']} {100 * t[METRIC]:.2f} (rank "
                               f"{ranked.index(t) + 1} of {len(ranked)})" for t in refs)
                     or "none finished") + "."]
    if space.objective == "pareto":
        lines += ["", "Pareto front (robust, clean): " + ", ".join(
            f"{t['trial_id']} ({100 * t[METRIC]:.1f}, {100 * t[CLEAN_METRIC]:.1f})"
            for t in pareto_front(ranked))]
    lines += ["", "## Plots", ""]
    for name in ("optimization_history.png", "param_importances.png", "parallel_coordinate.png",
                 "pareto_front.png", "top_schedules.png"):
        if (out / name).exists():
            lines.append(f"![{name}]({name})")
        elif name in skipped:
            lines.append(f"- {name}: not drawn ({skipped[name]})")
    lines += ["", "## Next", "", "`best.yaml` is the best trial's config at full length:", "",
              f"    python -m adr_scale.train --from-search {out} --out runs/{space.name}-long", ""]
    return "\n".join(lines)


def write_search_outputs(space: SearchSpace, grid, out: Path, optuna_url: str, storage: str,
                         statuses: dict[str, str] | None = None) -> dict[str, Any]:
    """Written only for a finished search phase (`statuses`: Tune's status of each trial)."""
    trials = collect_trials(space, grid, storage, statuses)
    write_results_parquet(out / "results.parquet", trials)
    ranked = rank_trials(trials)
    if space.objective == "pareto":
        front = pareto_front(ranked)
        ranked = front + [t for t in ranked if t not in front]
    if not ranked:
        return {}
    best = ranked[0]
    write_best_yaml(out / "best.yaml", space, best)
    plot_top_schedules(out / "top_schedules.png", space, ranked)
    skipped = (plot_study(out, space, optuna_url) if space.scheduler.type != "pbt" else
               dict.fromkeys(("optimization_history.png", "param_importances.png",
                              "parallel_coordinate.png"), "PBT runs without an Optuna study"))
    atomic_write_text(out / "report.md", report_markdown(space, trials, ranked, skipped, out))
    return {"best": best, "ranked": ranked}
