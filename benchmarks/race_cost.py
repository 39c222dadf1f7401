"""The racing confirmation against the grid, on the same full-length runs.

Runs a search space with its confirmation as a grid over `--grid-seeds` seeds (or reads a finished
one with `--out` and `--no-run`), then replays the race (`confirm.plan_race`, the driver's own
function) on those runs' scores: on CPU a run's numbers depend only on its config and seed, so the
race would have trained exactly these runs, and its decisions are the ones it would have taken.
Prints and saves: runs and full-length epochs spent by the race and by the grid over
`--grid-seeds` and over 3 seeds, each one's winner, and the winner's paired tests against AT
and the paper's schedule on the seeds the race ran.

Examples:
  python benchmarks/race_cost.py --space search_spaces/smoke.yaml --out /tmp/race-smoke \\
      --json benchmarks/results/race_cost_smoke.json
  python benchmarks/race_cost.py --space search_spaces/digits_overfit.yaml --out /tmp/race-do \\
      --json benchmarks/results/race_cost_digits_overfit.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from adr_scale.run.files import is_finished, latest_history
from adr_scale.run.provenance import short_revision
from adr_scale.search.confirm import full_length_score, plan_race, run_name
from adr_scale.search.space import load_space
from adr_scale.search.stats import paired_test, summary


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True)
    p.add_argument("--out", required=True, help="the search's output directory")
    p.add_argument("--grid-seeds", type=int, default=4, help="seeds of the grid that is run")
    p.add_argument("--min-seeds", type=int, default=2)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--no-run", action="store_true", help="read a finished grid search in --out")
    p.add_argument("--json", help="write the results here")
    return p.parse_args()


def run_grid(space_file: str, out: Path, seeds: int) -> float:
    raw = yaml.safe_load(open(space_file))
    raw["confirm"] = {**(raw.get("confirm") or {}), "mode": "grid", "seeds": seeds}
    raw["confirm"].pop("min_seeds", None)
    grid_space = out.parent / f"{out.name}-space.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    grid_space.write_text(yaml.safe_dump(raw))
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "adr_scale.tune", "--space", str(grid_space),
                    "--out", str(out)], check=True)
    return time.monotonic() - start


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    wall = None if args.no_run else run_grid(args.space, out, args.grid_seeds)
    space = load_space(args.space)
    storage = str(out / "ray")
    names = _candidates(space, out / "ray")
    seeds = list(range(args.grid_seeds))  # the smoke and digits presets' seed is 0
    scores = {}
    for c in names:
        for s in seeds:
            run = run_name(space, c, s)
            if not is_finished(storage, run):
                raise SystemExit(f"error: {run} did not finish; rerun without --no-run")
            scores[(c, s)] = full_length_score(latest_history(storage, run))[0]
    epochs = space.long_run_config(space.warm_start_params()).train.epochs
    result = {"space": args.space, "out": str(out), "git_revision": short_revision(),
              "command": " ".join(sys.argv), "grid_wall_s": wall, "candidates": names,
              "scores": {f"{c} s{s}": v for (c, s), v in scores.items()},
              "long_run_epochs": epochs}
    for label, min_seeds, max_seeds, alpha in (
            ("race", args.min_seeds, args.grid_seeds, args.alpha),
            ("grid3", 3, 3, 0.0), (f"grid{args.grid_seeds}", args.grid_seeds, args.grid_seeds, 0.0)):
        race = plan_race(names, seeds[:max_seeds], scores, min_seeds=min_seeds, alpha=alpha)
        assert race.decided
        runs = race.runs(seeds[:max_seeds])
        win = race.active[0]
        ran = [s for c, s in runs if c == win]
        vs = {}
        for ref in ("AT", "paper"):
            common = [s for s in ran if (ref, s) in dict.fromkeys(runs)]
            if ref != win and common:
                t = paired_test([scores[(win, s)] for s in common],
                                [scores[(ref, s)] for s in common])
                vs[ref] = {"diff": t.diff, "p_two_sided": t.p, "p_one_sided": t.p_greater,
                           "n": t.n}
        result[label] = {
            "runs": len(runs), "epochs": len(runs) * epochs, "winner": win,
            "winner_robust": str(summary([scores[(win, s)] for s in ran])),
            "stopped": {c: {"after_seeds": st.seeds, "leader": st.leader, "diff": st.test.diff,
                            "p_one_sided": st.test.p_less} for c, st in race.stopped.items()},
            "survivors": race.active, "vs": vs}
    result["race_over_grid3"] = result["race"]["runs"] / result["grid3"]["runs"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


def _candidates(space, storage: Path) -> list[str]:
    """The confirmation's candidates, from its run directories (NAME-confirm-CANDIDATE-sSEED),
    in the driver's order: the references, then search-1, search-2, ..."""
    prefix = f"{space.name}-confirm-"
    found = {p.name[len(prefix):].rsplit("-s", 1)[0] for p in storage.glob(f"{prefix}*-s*")
             if p.is_dir()}
    return sorted(found, key=lambda c: ({"paper": 0, "AT": 1}.get(c, 2), c))


if __name__ == "__main__":
    main()
