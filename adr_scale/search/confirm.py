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
from adr_scale.search.stats import (
    Paired,
    Summary,
    paired_test,
    pooled_paired_tests,
    spearman,
    summary,
)

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
    for i, t in enumerate(searched[:space.confirm.top_k]):
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


@dataclass(frozen=True)
class Stopped:
    seeds: int  # seeds it had run when it stopped (the round)
    leader: str  # the leader it was compared with
    test: Paired  # its paired difference to the leader over those seeds


@dataclass(frozen=True)
class Race:
    """Where a race over full-length runs stands, replayed from the finished runs' scores."""

    pending: list[tuple[str, int]]  # (candidate, seed) runs the next round needs; [] when decided
    active: list[str]  # candidates still racing, the leader first
    stopped: dict[str, Stopped]  # candidates the race stopped, by name
    rounds: int  # complete rounds (seeds run by every active candidate)

    @property
    def decided(self) -> bool:
        return not self.pending

    def runs(self, seeds: list[int]) -> list[tuple[str, int]]:
        """Every (candidate, seed) the race ran or runs now."""
        out = [(c, s) for c in self.active for s in seeds[:self.rounds]]
        out += [(c, s) for c, stop in self.stopped.items() for s in seeds[:stop.seeds]]
        return out + [r for r in self.pending if r not in out]


def plan_race(names: list[str], seeds: list[int], scores: dict[tuple[str, int], float], *,
              min_seeds: int, alpha: float) -> Race:
    """Replay a race (F-race / SMAC's intensification, with a paired t test) on `scores`, the
    validation robust accuracy of each finished (candidate, seed) run, and say what runs next.

    Every candidate runs the first `min_seeds` seeds (one round, run at once); after each round a
    candidate whose paired difference to the leader (best mean over the round's seeds) is
    significantly negative (one-sided paired t, p < `alpha`, the spread pooled over the round's
    candidates: `stats.pooled_paired_tests`) stops; the survivors get the next
    seed while more than one is left, up to len(seeds). Decisions depend on the scores only, so
    replaying them after an interrupt resumes the race where it stood. `alpha` 0 with
    `min_seeds` = len(seeds) is the plain grid (nothing stops)."""
    active, stopped = list(names), {}
    for r in range(min_seeds, len(seeds) + 1):
        want = seeds[:r] if r == min_seeds else seeds[r - 1:r]
        missing = [(c, s) for c in active for s in want if (c, s) not in scores]
        if missing:
            return Race(missing, active, stopped, r - len(want))
        run = seeds[:r]
        means = {c: sum(scores[(c, s)] for s in run) / r for c in active}
        leader = max(active, key=lambda c: (means[c], -names.index(c)))
        tests = pooled_paired_tests({c: [scores[(c, s)] - scores[(leader, s)] for s in run]
                                     for c in active if c != leader})
        for c, test in tests.items():
            if test.p_less < alpha:
                stopped[c] = Stopped(r, leader, test)
        active = [leader] + sorted((c for c in active if c != leader and c not in stopped),
                                   key=lambda c: (-means[c], names.index(c)))
        if len(active) == 1:
            return Race([], active, stopped, r)
    return Race([], active, stopped, len(seeds))


def summarise(candidates: list[Candidate], seeds: list[int],
              runs: dict[tuple[str, int], list[dict[str, Any]]],
              winner: str | None = None) -> list[Confirmed]:
    """One row per candidate, `winner` (the race's) first, then best mean full-length robust
    accuracy first. Pairs are by seed, and only seeds where both runs finished enter a paired
    test."""
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
    return sorted(out, key=lambda r: (r.candidate.name != winner, -_or_low(r.robust.mean),
                                      r.candidate.name))


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


def verdict(winner: str, ref: str, test: Paired | None, alpha: float) -> str:
    """The winner against a reference in words: by how much it beats it, or a tie at N seeds."""
    if test is None or test.n == 0:
        return f"{winner} vs {ref}: no seed in common"
    if test.n < 2:
        return f"{winner} vs {ref}: {100 * test.diff:+.2f} points on 1 seed, no test"
    how = f"{test.n} seeds, one-sided paired t, p {test.p_greater:.2g}"
    if test.p_greater < alpha:
        return f"{winner} beats {ref} by {100 * test.diff:.2f} points ({how})"
    return f"{winner} vs {ref}: {100 * test.diff:+.2f} points, a tie at {test.n} seeds ({how})"


def race_column(name: str, race: Race, winner: str) -> str:
    """How a candidate left the race: the winner, stopped after k seeds (and why), or a survivor
    the winner was not separated from."""
    if name == winner:
        return "winner"
    stop = race.stopped.get(name)
    if stop is None:
        return f"not separated from {winner} at {race.rounds} seeds"
    return (f"stopped after {stop.seeds} seeds: {100 * stop.test.diff:+.2f} vs {stop.leader} "
            f"(one-sided p {stop.test.p_less:.2g})")


def race_cost(race: Race, seeds: list[int], names: list[str]) -> tuple[int, int]:
    """(runs the race trained, runs the grid over every seed would train)."""
    return len(race.runs(seeds)), len(names) * len(seeds)


def report_section(space: SearchSpace, rows: list[Confirmed], rho: float, out: Path,
                   seconds: float, race: Race | None = None,
                   seeds: list[int] | None = None) -> str:
    winner = rows[0]
    epochs = space.long_run_config(winner.candidate.params).train.epochs
    racing = race is not None and space.confirm.mode == "race"
    how = (f"raced over up to {space.confirm.seeds} seeds: every candidate ran "
           f"{space.confirm.min_seeds}, then after each round a candidate whose paired difference "
           f"to the leader was significantly negative (one-sided paired t, alpha "
           f"{space.confirm.alpha:g}) stopped, and the rest got one more seed while more than one "
           "was left" if racing else f"each trained with seeds {winner.seeds}")
    lines = [
        "## Confirmation at full length",
        "",
        f"The top {space.confirm.top_k} searched "
        f"schedule{'s' if space.confirm.top_k > 1 else ''}, the paper's schedule and plain AT "
        f"(lambda 0) at full length ({epochs} epochs), {how} ({seconds / 60:.1f} min). Validation "
        "PGD robust and clean accuracy (%) of each run's best validated epoch, mean +- std over "
        "the seeds it ran; the differences are paired by seed (two-sided paired t test) over the "
        "seeds both ran. The test set was not used.",
        "",
        "| schedule | tau, lambda | search score | seeds | val robust | val clean | vs AT | vs paper |"
        + (" race |" if racing else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if racing else ""),
    ]
    for r in rows:
        c = r.candidate
        search = "-" if math.isnan(c.search_score) else f"{100 * c.search_score:.2f}"
        lines.append(f"| {c.name}{' **(winner)**' if r is winner else ''} | {_fields(c.fields)} | "
                     f"{search} | {len(r.seeds)} | {r.robust} | {r.clean} | {_diff(r.vs_at)} | "
                     f"{_diff(r.vs_paper)} |"
                     + (f" {race_column(c.name, race, winner.candidate.name)} |" if racing else ""))
    alpha = space.confirm.alpha
    lines += ["", *(f"- {verdict(winner.candidate.name, ref, test, alpha)}." for ref, test in
                    (("AT", winner.vs_at), ("paper", winner.vs_paper))
                    if ref != winner.candidate.name)]
    if race is not None and seeds is not None:
        spent, grid = race_cost(race, seeds, [r.candidate.name for r in rows])
        lines += [f"- Full-length runs: {spent} ({spent * epochs} epochs); every candidate on "
                  f"every one of the {len(seeds)} seeds would be {grid} ({spent / grid:.2f} of it)."]
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
