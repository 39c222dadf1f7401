"""What ASHA saves: epochs consumed by an ASHA search vs running every trial to the end.

Both searches draw the same trials (the random sampler with one seed proposes the same points
whatever the results), so the only difference is the early stopping. Prints the epochs each
consumed, their ratio (goal <= 1/4), and whether both pick the same best trial.

Examples:
  python benchmarks/search_cost.py                                  # smoke space, 8 trials
  python benchmarks/search_cost.py --space search_spaces/smoke.yaml --num-samples 12 --epochs 9
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from adr_scale.search_space import load_space
from adr_scale.tune import run_search


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="search_spaces/smoke.yaml")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--epochs", type=int, default=9, help="per-trial budget (ASHA rungs 1, 3, 9)")
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--json", help="also write the numbers here")
    return p.parse_args()


def consumed_epochs(out: Path) -> tuple[int, dict[str, int]]:
    rows = pq.read_table(out / "results.parquet").to_pylist()
    per_trial: dict[str, int] = {}
    for r in rows:
        per_trial[r["trial_id"]] = max(per_trial.get(r["trial_id"], 0), r["epoch"] or 0)
    return sum(per_trial.values()), per_trial


def main() -> None:
    args = parse_args()
    base = dataclasses.replace(load_space(args.space), sampler="random", epochs=args.epochs,
                               grace_period=1, reduction_factor=args.reduction_factor,
                               confirm_top_k=0)  # the search alone: no full-length stage
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, scheduler in (("full", "none"), ("asha", "asha")):
            space = dataclasses.replace(base, scheduler=scheduler, name=f"cost-{label}")
            out = Path(tmp) / label
            best = run_search(space, out, num_samples=args.num_samples,
                              max_concurrent=args.max_concurrent)["best"]
            epochs, _ = consumed_epochs(out)
            results[label] = {"epochs": epochs, "best_fields": best["fields"],
                              "best_val_robust_acc": best["val_robust_acc"]}
            print(f"{label:5s}: {epochs:4d} epochs consumed; best val robust "
                  f"{best['val_robust_acc']:.4f} with {best['fields']}")
    ratio = results["asha"]["epochs"] / results["full"]["epochs"]
    same = results["asha"]["best_fields"] == results["full"]["best_fields"]
    print(f"ratio ASHA / full: {ratio:.3f} (goal <= 0.25); same best trial: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(results | {"ratio": ratio, "same_best": same},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
