"""The confirmation stage's bookkeeping (no Ray): candidates, per-seed summaries, paired
differences, the rank correlation, best.yaml and the report table."""

import math

import pytest
import yaml

from adr_scale.config import load_yaml
from adr_scale.search.confirm import (
    pick_candidates,
    plan_race,
    race_cost,
    rank_correlation,
    report_section,
    summarise,
    verdict,
    write_winner,
)
from adr_scale.search.space import load_space, parse_space


@pytest.fixture(scope="module")
def space():
    return load_space("tests/assets/ci_space.yaml")


def _trial(space, trial_id, lam_start, gap, score):
    params = {"adr.tau_end": 1.5, "adr.tau_start - adr.tau_end": 0.5,
              "adr.lambda_start": lam_start, "adr.lambda_end - adr.lambda_start": gap}
    return {"trial_id": trial_id, "params": params, "fields": space.field_values(params),
            "val_robust_acc": score}


def _rows(robust, clean=0.9, epochs=3):
    """A run whose best validated epoch has `robust` (one unvalidated epoch in between)."""
    return [{"epoch": 1, "val_robust_acc": robust - 0.1, "val_clean_acc": clean},
            {"epoch": 2, "train_loss": 1.0},
            {"epoch": epochs, "val_robust_acc": robust, "val_clean_acc": clean}]


def test_candidates_are_the_references_and_the_top_k_searched(space):
    paper = space.reference_points()["paper"]
    ranked = [_trial(space, "t3", 0.5, 0.2, 0.60), _trial(space, "t1", 0.0, 0.0, 0.58),
              _trial(space, "t2", 0.4, 0.1, 0.55), _trial(space, "t4", 0.3, 0.1, 0.50),
              _trial(space, "t5", 0.2, 0.1, 0.40)]
    ranked[1]["params"] = space.reference_points()["AT"]  # the AT reference trial
    ranked[1]["fields"] = space.field_values(ranked[1]["params"])
    got = pick_candidates(space, ranked)
    assert [c.name for c in got] == ["paper", "AT", "search-1", "search-2", "search-3"]
    assert [c.trial_id for c in got] == [None, "t1", "t3", "t2", "t4"]
    assert math.isnan(got[0].search_score) and got[1].search_score == 0.58
    assert got[0].params == paper and got[1].fields["adr.lambda_end"] == 0.0


def test_summary_pairs_by_seed_and_ranks_by_mean(space, tmp_path):
    cands = pick_candidates(space, [_trial(space, "t3", 0.5, 0.2, 0.60),
                                    _trial(space, "t2", 0.4, 0.1, 0.55)])
    seeds = [0, 1, 2]
    scores = {"AT": [0.70, 0.72, 0.71], "paper": [0.66, 0.69, 0.65],
              "search-1": [0.74, 0.75, 0.73], "search-2": [0.69, 0.70, 0.71]}
    runs = {(name, s): _rows(v[i]) for name, v in scores.items() for i, s in enumerate(seeds)}
    del runs[("search-2", 2)]  # an unfinished run: its seed drops out of that pair only
    rows = summarise(cands, seeds, runs)
    assert [r.candidate.name for r in rows] == ["search-1", "AT", "search-2", "paper"]
    win = rows[0]
    assert win.robust.mean == pytest.approx(0.74) and win.robust.n == 3
    assert win.vs_at.diff == pytest.approx(0.03) and win.vs_at.n == 3
    assert win.vs_paper.diff == pytest.approx(0.74 - (0.66 + 0.69 + 0.65) / 3)
    s2 = next(r for r in rows if r.candidate.name == "search-2")
    assert s2.seeds == [0, 1] and s2.vs_at.n == 2 and s2.vs_at.diff == pytest.approx(-0.015)
    assert next(r for r in rows if r.candidate.name == "AT").vs_at is None
    # search scores 0.60 / 0.55 (searched) vs full 0.74 / 0.695, with AT, paper unsearched: 2 points
    assert math.isnan(rank_correlation(rows))
    write_winner(tmp_path / "best.yaml", space, win, base_seed=0)
    best = load_yaml(tmp_path / "best.yaml")
    assert best.train.epochs == 15 and best.adr.lambda_start == pytest.approx(0.5)
    assert best.adr.lambda_end == pytest.approx(0.7)
    text = report_section(space, rows, rank_correlation(rows), tmp_path, 120.0)
    assert "| search-1 **(winner)** |" in text and "74.00 +- 1.00" in text
    assert "+3.00" in text and "python -m adr_scale.evaluate --run runs/smoke-long" in text


def test_confirm_block_is_validated_in_one_line():
    import yaml

    from adr_scale.config import ConfigError
    from adr_scale.search.space import parse_space

    raw = yaml.safe_load(open("tests/assets/ci_space.yaml"))
    space = parse_space(raw | {"confirm": {"top_k": 1, "seeds": 2, "max_concurrent": 4}})
    assert (space.confirm.top_k, space.confirm.seeds, space.confirm.max_concurrent) == (1, 2, 4)
    assert parse_space(raw).confirm.max_concurrent is None  # the search's max_concurrent
    for bad, message in (({"top_k": -1}, "confirm.top_k: invalid value -1"),
                         ({"seeds": 0}, "confirm.seeds: invalid value 0"),
                         ({"repeats": 2}, "unknown key 'confirm.repeats'; allowed in confirm: "
                                          "alpha, max_concurrent, min_seeds, mode, seeds, top_k")):
        with pytest.raises(ConfigError, match=message) as exc:
            parse_space(raw | {"confirm": bad})
        assert "\n" not in str(exc.value)
    no_lambda = raw | {"params": {k: v for k, v in raw["params"].items() if "lambda" not in k},
                       "warm_start": {"adr.tau_start": 2.5, "adr.tau_end": 2.0}}
    with pytest.raises(ConfigError, match=r"params.adr.lambda_start: not searched; allowed: a "
                                          r"range holding 0 .* or references: false"):
        parse_space(no_lambda)
    assert parse_space(no_lambda | {"references": False}).reference_points() == {}


# -- the race ---------------------------------------------------------------------------------

NAMES = ["paper", "AT", "search-1", "search-2"]
SEEDS = [0, 1, 2, 3]
# per-seed validation robust accuracy: search-1 leads, AT is close to it, paper and search-2 trail
TRUTH = {"paper": [0.70, 0.71, 0.69, 0.70], "AT": [0.80, 0.82, 0.80, 0.83],
         "search-1": [0.81, 0.82, 0.81, 0.83], "search-2": [0.60, 0.62, 0.61, 0.60]}


def _scores(upto: dict[str, int]) -> dict[tuple[str, int], float]:
    return {(c, s): TRUTH[c][i] for c, n in upto.items() for i, s in enumerate(SEEDS[:n])}


def _play(min_seeds=2, alpha=0.05):
    """Run the race to its end on TRUTH, as the driver does: (race, runs per round)."""
    scores, rounds = {}, []
    while True:
        race = plan_race(NAMES, SEEDS, scores, min_seeds=min_seeds, alpha=alpha)
        if race.decided:
            return race, rounds
        rounds.append(sorted(race.pending))
        scores |= {(c, s): TRUTH[c][SEEDS.index(s)] for c, s in race.pending}


def test_the_race_stops_clear_losers_and_adds_seeds_where_the_answer_is_open():
    race, rounds = _play()
    assert len(rounds[0]) == 8  # every candidate on seeds 0 and 1, at once
    assert race.stopped["paper"].seeds == 2 and race.stopped["search-2"].seeds == 2
    assert race.stopped["paper"].leader == "search-1"
    assert race.stopped["search-2"].test.diff == pytest.approx(0.61 - 0.815)
    assert rounds[1:] == [[("AT", 2), ("search-1", 2)], [("AT", 3), ("search-1", 3)]]
    assert race.active == ["search-1", "AT"] and race.rounds == 4  # a tie at max seeds
    assert race_cost(race, SEEDS, NAMES) == (12, 16)


def test_the_grid_is_the_race_that_never_stops():
    race, rounds = _play(min_seeds=4, alpha=0.0)
    assert len(rounds) == 1 and len(rounds[0]) == 16 and race.stopped == {}
    assert race.active[0] == "search-1" and race.active[-1] == "search-2"


def test_a_race_resumes_from_a_half_finished_round():
    done = _scores({"paper": 2, "AT": 2, "search-1": 2, "search-2": 2}) | {("AT", 2): 0.79}
    race = plan_race(NAMES, SEEDS, done, min_seeds=2, alpha=0.05)
    assert race.pending == [("search-1", 2)] and race.rounds == 2
    first = plan_race(NAMES, SEEDS, _scores({"AT": 1, "paper": 2}), min_seeds=2, alpha=0.05)
    assert sorted(first.pending) == sorted([("AT", 1), ("search-1", 0), ("search-1", 1),
                                           ("search-2", 0), ("search-2", 1)])


def test_the_race_ends_when_one_candidate_is_left():
    clear = dict(TRUTH, AT=[0.70, 0.72, 0.71, 0.70])
    scores = {(c, s): clear[c][i] for c in NAMES for i, s in enumerate(SEEDS)}
    race = plan_race(NAMES, SEEDS, scores, min_seeds=2, alpha=0.05)
    assert race.decided and race.active == ["search-1"] and race.rounds == 2
    assert set(race.stopped) == {"paper", "AT", "search-2"}
    assert race_cost(race, SEEDS, NAMES) == (8, 16)


def test_the_race_report_rows_and_the_tie_wording(space, tmp_path):
    cands = pick_candidates(space, [_trial(space, "t3", 0.5, 0.2, 0.60),
                                    _trial(space, "t2", 0.4, 0.1, 0.55)])
    race, _ = _play()
    runs = {r: _rows(TRUTH[r[0]][SEEDS.index(r[1])]) for r in race.runs(SEEDS)}
    rows = summarise(cands, SEEDS, runs, winner=race.active[0])
    assert [r.candidate.name for r in rows][:2] == ["search-1", "AT"]
    assert [len(r.seeds) for r in rows] == [4, 4, 2, 2]
    space4 = parse_space(yaml.safe_load(open("tests/assets/ci_space.yaml"))
                         | {"confirm": {"top_k": 2, "seeds": 4}})
    text = report_section(space4, rows, rank_correlation(rows), tmp_path, 60.0, race=race,
                          seeds=SEEDS)
    assert "| search-1 **(winner)** |" in text and "| winner |" in text
    assert "| not separated from search-1 at 4 seeds |" in text  # AT
    assert "stopped after 2 seeds: -11.00 vs search-1 (one-sided p" in text  # paper
    assert "- search-1 vs AT: +0.50 points, a tie at 4 seeds (4 seeds, one-sided paired t, p" in text
    assert "- search-1 beats paper by 11.00 points (2 seeds, one-sided paired t, p" in text
    assert "- Full-length runs: 12 (180 epochs); every candidate on every one of the 4 seeds " \
           "would be 16 (0.75 of it)." in text
    assert verdict("x", "AT", None, 0.05) == "x vs AT: no seed in common"
