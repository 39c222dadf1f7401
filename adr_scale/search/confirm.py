"""The confirmation stage of a search: the top-k schedules, the paper's schedule and plain AT
trained at full length (the space's `long_run`) over several seeds, compared on validation accuracy.

A search ranks schedules by short, low-fidelity trials; its answer is worth something only if the
chosen schedule also wins at full length, against what a user would do without the search. This
module is Ray-free: it picks the candidates, summarises the runs (mean +- std over seeds, paired
differences to AT and to the paper's schedule, the Spearman correlation between search-budget and
full-length scores), picks the winner and writes best.yaml and the report section. `adr_scale.tune`
runs the trainings. The test set is never touched; the report names the command that evaluates
the winner on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adr_scale.config import dump_yaml
from adr_scale.run.directory import atomic_write_text
from adr_scale.search.space import CLEAN_METRIC, METRIC, SearchSpace
from adr_scale.search.stats import Paired, Summary, paired_test, spearman, summary

REFERENCES = ("AT", "paper")


@dataclass(frozen=True)
class Candidate:
    name: str  # "AT", "paper", or "search-1" ... (rank in the search)
    params: dict[str, Any]  # Optuna parameter names -> values
    fields: dict[str, Any]  # config fields -> values
    search_score: float  # validation robust accuracy at the search budget (nan if not searched)
    trial_id: str | None = None


def pick_candidates(space: SearchSpace, ranked: list[dict[str, Any]]) -> list[Candidate]:
    """The top_k searched schedules (best first; the references excluded) plus AT and the paper's
    schedule, with the references' own search-budget scores where their trials ran."""
    by_reference = {space.reference_of(t["fields"]): t for t in ranked if t["fields"]}
    out = []
    for name, params in space.reference_points().items():
        trial = by_reference.get(name)
        out.append(Candidate(name, params, space.field_values(params),
                             trial[METRIC] if trial else math.nan,
                             trial["trial_id"] if trial else None))
    searched = [t for t in ranked if space.reference_of(t["fields"]) is None]
    for i, t in enumerate(searched[:space.confirm_top_k]):
        out.append(Candidate(f"search-{i + 1}", t["params"], t["fields"], t[METRIC], t["trial_id"]))
    return out


def run_name(space: SearchSpace, candidate: str, seed: int) -> str:
    """Deterministic, so a resumed confirmation finds its runs."""
    return f"{space.name}-confirm-{candidate}-s{seed}"


def full_length_score(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(robust, clean) validation accuracy of the best validated epoch (what best.pt holds)."""
    validated = [r for r in rows if METRIC in r]
    if not validated:
        return math.nan, math.nan
    best = max(validated, key=lambda r: (r[METRIC], -r["epoch"]))
    return best[METRIC], best[CLEAN_METRIC]


@dataclass(frozen=True)
class Confirmed:
    candidate: Candidate
    seeds: list[int]
    robust: Summary
    clean: Summary
    vs_at: Paired | None
    vs_paper: Paired | None
    per_seed: list[float]


def summarise(candidates: list[Candidate], seeds: list[int],
              runs: dict[tuple[str, int], list[dict[str, Any]]]) -> list[Confirmed]:
    """One row per candidate, best mean full-length robust accuracy first. Pairs are by seed, and
    only seeds where both runs finished enter a paired test."""
    scores = {key: full_length_score(rows) for key, rows in runs.items()}

    def per_seed(name: str, which: int) -> dict[int, float]:
        return {s: scores[(name, s)][which] for s in seeds
                if (name, s) in scores and not math.isnan(scores[(name, s)][which])}

    out = []
    for c in candidates:
        robust = per_seed(c.name, 0)
        vs = {}
        for ref in REFERENCES:
            other = per_seed(ref, 0)
            common = [s for s in seeds if s in robust and s in other]
            vs[ref] = (paired_test([robust[s] for s in common], [other[s] for s in common])
                       if c.name != ref and common else None)
        out.append(Confirmed(c, sorted(robust), summary(list(robust.values())),
                             summary(list(per_seed(c.name, 1).values())), vs["AT"], vs["paper"],
                             [robust[s] for s in sorted(robust)]))
    return sorted(out, key=lambda r: (-_or_low(r.robust.mean), r.candidate.name))


def _or_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def rank_correlation(rows: list[Confirmed]) -> float:
    """Spearman between the search-budget score and the mean full-length score (candidates with
    both)."""
    pairs = [(r.candidate.search_score, r.robust.mean) for r in rows
             if not math.isnan(r.candidate.search_score) and not math.isnan(r.robust.mean)]
    return spearman([a for a, _ in pairs], [b for _, b in pairs])


def write_winner(path: Path, space: SearchSpace, winner: Confirmed, base_seed: int) -> None:
    """best.yaml: the confirmed winner's full-length config (only from a finished confirmation,
    so the winner has finished runs)."""
    if winner.robust.n == 0:
        raise ValueError(f"write_winner: {winner.candidate.name} has no finished run")
    cfg = space.long_run_config(winner.candidate.params)
    header = (f"# Confirmed winner of search '{space.name}' ({space.source}): {winner.candidate.name}"
              f" ({_fields(winner.candidate.fields)}), validation PGD robust accuracy "
              f"{winner.robust} % (mean +- std over seeds {winner.seeds}) at full length "
              f"({cfg.train.epochs} epochs), seed {base_seed} here.\n"
              f"# python -m adr_scale.train --config {path} --out runs/{space.name}-long\n")
    atomic_write_text(path, header + dump_yaml(cfg))


def _fields(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.', 1)[1]} {v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in fields.items())


def _diff(p: Paired | None) -> str:
    if p is None:
        return "-"
    pv = "" if math.isnan(p.p) else f" (p {p.p:.2g})"
    return f"{100 * p.diff:+.2f}{pv}"


def report_section(space: SearchSpace, rows: list[Confirmed], rho: float, out: Path,
                   seconds: float) -> str:
    winner = rows[0]
    lines = [
        "## Confirmation at full length",
        "",
        f"The top {space.confirm_top_k} searched schedules, the paper's schedule and plain AT "
        f"(lambda 0), each trained at full length ({space.long_run_config(winner.candidate.params).train.epochs}"
        f" epochs) with seeds {winner.seeds} ({seconds / 60:.1f} min). Validation PGD robust and "
        "clean accuracy (%) of each run's best validated epoch, mean +- std over seeds; the "
        "differences are paired by seed (two-sided paired t test). The test set was not used.",
        "",
        "| schedule | tau, lambda | search score | val robust | val clean | vs AT | vs paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r.candidate
        search = "-" if math.isnan(c.search_score) else f"{100 * c.search_score:.2f}"
        lines.append(f"| {c.name}{' **(winner)**' if r is winner else ''} | {_fields(c.fields)} | "
                     f"{search} | {r.robust} | {r.clean} | {_diff(r.vs_at)} | {_diff(r.vs_paper)} |")
    rho_text = "n/a (fewer than 3 candidates with both scores)" if math.isnan(rho) else f"{rho:.2f}"
    lines += [
        "",
        f"Spearman rank correlation between the search-budget score and the full-length mean: "
        f"{rho_text}.",
        "",
        f"best.yaml holds the winner, **{winner.candidate.name}**. Evaluate it on the test set "
        f"(AutoAttack) after training it: `python -m adr_scale.train --config {out / 'best.yaml'} "
        f"--out runs/{space.name}-long && python -m adr_scale.evaluate --run runs/{space.name}-long`.",
        "",
    ]
    return "\n".join(lines)
