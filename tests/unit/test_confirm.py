"""The confirmation stage's bookkeeping (no Ray): candidates, per-seed summaries, paired
differences, the rank correlation, best.yaml and the report table."""

import math

import pytest

from adr_scale.config import load_yaml
from adr_scale.search.confirm import (
    pick_candidates,
    rank_correlation,
    report_section,
    summarise,
    write_winner,
)
from adr_scale.search.space import load_space


@pytest.fixture(scope="module")
def space():
    return load_space("search_spaces/smoke.yaml")


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

    raw = yaml.safe_load(open("search_spaces/smoke.yaml"))
    space = parse_space(raw | {"confirm": {"top_k": 1, "seeds": 2, "max_concurrent": 4}})
    assert (space.confirm_top_k, space.confirm_seeds, space.confirm_concurrent) == (1, 2, 4)
    assert parse_space(raw).confirm_concurrent is None  # the search's max_concurrent
    for bad, message in (({"top_k": -1}, "confirm.top_k: invalid value -1"),
                         ({"seeds": 0}, "confirm.seeds: invalid value 0"),
                         ({"repeats": 2}, "confirm: expected")):
        with pytest.raises(ConfigError, match=message) as exc:
            parse_space(raw | {"confirm": bad})
        assert "\n" not in str(exc.value)
    no_lambda = raw | {"params": {k: v for k, v in raw["params"].items() if "lambda" not in k},
                       "warm_start": {"adr.tau_start": 2.5, "adr.tau_end": 2.0}}
    with pytest.raises(ConfigError, match=r"params.adr.lambda_start: not searched; allowed: a "
                                          r"range holding 0 .* or references: false"):
        parse_space(no_lambda)
    assert parse_space(no_lambda | {"references": False}).reference_points() == {}
