"""What early stopping saves: epochs consumed by a scheduler vs running every trial to the end.

Both searches draw the same trials (the random sampler with one seed proposes the same points
whatever the results, and the references come first), so the only difference is the early
stopping. Prints the epochs each consumed, their ratio (goal <= 1/4), whether both pick the same
best trial, and the wall time of each. `halving` (synchronous successive halving) has a fixed
cost, `adr_scale.search.rungs.halving_cost` (the two references, never stopped, run the whole
budget); asynchronous `asha` lets early trials through its rungs.

Examples:
  python benchmarks/search_cost.py --search-lr --json benchmarks/results/search_cost_rf3.json
  python benchmarks/search_cost.py --search-lr --reduction-factor 4  # rungs 1, 4: cheaper
  python benchmarks/search_cost.py --scheduler asha --num-samples 8 --epochs 9 --reduction-factor 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from adr_scale.search.driver import run_search
from adr_scale.search.params import Param
from adr_scale.search.rungs import halving_cost
from adr_scale.search.space import load_space


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="search_spaces/smoke.yaml")
    p.add_argument("--scheduler", default="halving", choices=("halving", "asha"))
    p.add_argument("--num-samples", type=int, default=27)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--epochs", type=int, default=16, help="per-trial budget (rungs 1, 3, 9 at rf 3)")
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--train-size", type=int, default=320,
                   help="data.train_size of every trial (epochs of train_size / batch steps)")
    p.add_argument("--search-lr", action="store_true",
                   help="also search optim.lr (loguniform 1e-4..0.2, warm start 0.1)")
    p.add_argument("--json", help="also write the numbers here")
    return p.parse_args()


def consumed_epochs(out: Path) -> tuple[int, dict[str, int]]:
    rows = pq.read_table(out / "results.parquet").to_pylist()
    per_trial: dict[str, int] = {}
    for r in rows:
        per_trial[r["trial_id"]] = max(per_trial.get(r["trial_id"], 0), r["epoch"] or 0)
    return sum(per_trial.values()), per_trial


def trial_outcomes(out: Path, names: list[str]) -> list[dict]:
    """Per trial: its searched values, the epochs it trained and its last validation robust
    accuracy, best first (the key `point` matches a trial across the two searches)."""
    last: dict[str, dict] = {}
    for r in pq.read_table(out / "results.parquet").to_pylist():
        if r["epoch"] and r["epoch"] >= last.get(r["trial_id"], {}).get("epoch", 0):
            last[r["trial_id"]] = r
    rows = [{"point": point_key({n: r[n] for n in names}), "epochs": r["epoch"],
             "val_robust_acc": r["val_robust_acc"]} for r in last.values()]
    return sorted(rows, key=lambda r: -r["val_robust_acc"])


def point_key(fields: dict) -> str:
    return json.dumps({k: round(float(v), 10) for k, v in sorted(fields.items())})


def benchmark_space(args: argparse.Namespace):
    space = load_space(args.space)
    params, warm = space.params, dict(space.warm_start)
    if args.search_lr:
        params += (Param(field="optim.lr", distribution="loguniform", low=1e-4, high=0.2),)
        warm["optim.lr"] = 0.1
    return dataclasses.replace(
        space, sampler=dataclasses.replace(space.sampler, type="random"),
        budget=dataclasses.replace(space.budget, epochs=args.epochs),
        scheduler=dataclasses.replace(space.scheduler, grace_period=1,
                                      reduction_factor=args.reduction_factor),
        params=params, warm_start=warm,
        confirm=dataclasses.replace(space.confirm, top_k=0),  # search only
        fixed=space.fixed | {"data.train_size": args.train_size})


def main() -> None:
    args = parse_args()
    base = benchmark_space(args)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, scheduler in ((args.scheduler, args.scheduler), ("full", "none")):
            space = dataclasses.replace(
                base, scheduler=dataclasses.replace(base.scheduler, type=scheduler),
                name=f"cost-{label}")
            out = Path(tmp) / label
            start = time.monotonic()
            best = run_search(space, out, num_samples=args.num_samples,
                              max_concurrent=args.max_concurrent)["best"]
            epochs, per_trial = consumed_epochs(out)
            results[label] = {"epochs": epochs, "trials": len(per_trial),
                              "outcomes": trial_outcomes(out, [p.field for p in space.params]),
                              "wall_s": round(time.monotonic() - start, 1),
                              "epochs_per_trial": sorted(per_trial.values()),
                              "best_trial_fields": best["fields"],
                              "best_val_robust_acc": best["val_robust_acc"],
                              "best_val_clean_acc": best["val_clean_acc"]}
            print(f"{label:7s}: {epochs:4d} epochs consumed in {results[label]['wall_s']} s; "
                  f"best val robust {best['val_robust_acc']:.4f} with {best['fields']}")
            if args.json:  # after each search, so a stopped run keeps the first
                write_record(args, results)
    sched = args.scheduler
    ratio = results[sched]["epochs"] / results["full"]["epochs"]
    same = results[sched]["best_trial_fields"] == results["full"]["best_trial_fields"]
    full = results["full"]["outcomes"]
    pick = point_key(results[sched]["best_trial_fields"])
    pick_rank = next(i for i, r in enumerate(full, 1) if r["point"] == pick)
    full_best_epochs = next(r["epochs"] for r in results[sched]["outcomes"]
                            if r["point"] == full[0]["point"])
    print(f"{sched}'s pick is #{pick_rank} of {len(full)} at full length "
          f"({full[pick_rank - 1]['val_robust_acc']:.4f} vs the best {full[0]['val_robust_acc']:.4f}); "
          f"{sched} stopped the full search's best after {full_best_epochs} epochs")
    print(f"ratio {sched} / full: {ratio:.3f} (goal <= 0.25); same best trial: {same}")
    if args.json:
        write_record(args, results, ratio=ratio, same_best=same, pick_rank_at_full_length=pick_rank,
                     full_best_epochs_under_scheduler=full_best_epochs)


def write_record(args: argparse.Namespace, results: dict, **outcome) -> None:
    sched = args.scheduler
    rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    record = {"command": "python " + " ".join(sys.argv), "git": rev,
              "space": args.space, "num_samples": args.num_samples,
              "max_concurrent": args.max_concurrent, "epochs": args.epochs,
              "reduction_factor": args.reduction_factor, "grace_period": 1,
              "train_size": args.train_size, "search_lr": args.search_lr,
              "sampler": "random (seed of the space)", "scheduler": sched,
              "halving_cost_expected": (halving_cost(
                  args.num_samples, args.epochs, 1, args.reduction_factor,
                  references=len(benchmark_space(args).reference_points()))
                  if sched == "halving" else None),
              **results, **outcome}
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
