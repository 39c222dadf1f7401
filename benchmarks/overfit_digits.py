"""Robust overfitting on the bundled digits: AT and AT + ADR over seeds, best vs final epoch.

Trains a preset (default `digits_overfit`) in this process for every seed, once as plain PGD-AT
(adr.enabled=false) and once with ADR at the preset's schedule (the paper's CIFAR-10 tau 2.5 ->
2.0, lambda 0.7 -> 0.95), and reads each run's summary.json: the best and the final epoch's
validation PGD robust accuracy and their difference (the robust overfitting gap of the paper's
Table 1). Prints one row per run and mean +- std over seeds. Best - final is >= 0 by construction
and picks up epoch-to-epoch noise, so the table also gives a smoothed gap: the best 3-epoch mean
minus the mean of the last 3 epochs, which a trend survives and a single noisy epoch does not.
One thread (the machine is shared); each run takes a few minutes on one core.

Examples:
  python benchmarks/overfit_digits.py --json benchmarks/results/overfit_digits.json
  python benchmarks/overfit_digits.py --methods at --seeds 0 1 2 --set train.epochs=80
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from adr_scale.config import apply_overrides, get_preset, to_dict
from adr_scale.drivers import fit
from adr_scale.run.provenance import short_revision
from adr_scale.search.stats import paired_test, summary

METHODS = {"at": ["adr.enabled=false"], "adr": ["adr.enabled=true"]}
SMOOTH = 3  # epochs averaged by the smoothed gap


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits_overfit")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["at", "adr"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable)")
    p.add_argument("--out", help="keep the run directories here (default: a temporary one)")
    p.add_argument("--json", help="also write the numbers, configs and git revision here")
    return p.parse_args()


def smoothed_gap(curve: list[float], k: int = SMOOTH) -> float:
    """max over windows of the k-epoch mean, minus the mean of the last k epochs."""
    if len(curve) < k:
        return max(curve) - curve[-1]
    means = [sum(curve[i:i + k]) / k for i in range(len(curve) - k + 1)]
    return max(means) - means[-1]


def run_one(preset: str, method: str, seed: int, overrides: list[str], out: Path) -> dict[str, Any]:
    cfg = apply_overrides(get_preset(preset), ["train.device=cpu", *overrides, *METHODS[method],
                                               f"seed={seed}"])
    start = time.monotonic()
    s = fit(cfg, out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [r["val_robust_acc"] for r in rows if "val_robust_acc" in r]
    return {"method": method, "seed": seed, "best_epoch": s["best_epoch"],
            "best_val_robust_acc": s["best_val_robust_acc"],
            "final_val_robust_acc": s["final_val_robust_acc"],
            "gap": s["robust_overfitting_gap"], "smoothed_gap": smoothed_gap(curve),
            "best_val_clean_acc": s["best_val_clean_acc"],
            "final_val_clean_acc": s["final_val_clean_acc"],
            "val_robust_curve": curve, "seconds": round(time.monotonic() - start, 1),
            "config": to_dict(cfg)}


KEYS = ("best_val_robust_acc", "final_val_robust_acc", "gap", "smoothed_gap",
        "best_val_clean_acc", "final_val_clean_acc")


def print_table(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, str]]:
    head = "best rob | final rob | gap | smoothed gap | best clean | final clean"
    print(f"| method | seed | best epoch | {head} | s |")
    print("|---" * 10 + "|")
    for r in runs:
        cells = " | ".join(f"{100 * r[k]:.2f}" for k in KEYS)
        print(f"| {r['method']} | {r['seed']} | {r['best_epoch']} | {cells} | {r['seconds']} |")
    stats = {}
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        stats[m] = {k: str(summary([r[k] for r in mine])) for k in KEYS}
        print(f"| {m} | mean +- std ({len(mine)} seeds) | | "
              + " | ".join(stats[m][k] for k in KEYS) + " | |")
    return stats


def paired(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ADR - AT per field, paired by seed: mean and std of the differences, t test p value."""
    by = {m: {r["seed"]: r for r in runs if r["method"] == m} for m in METHODS}
    seeds = sorted(set(by["at"]) & set(by["adr"]))
    if len(seeds) < 2:
        return {}
    out = {}
    for k in KEYS:
        t = paired_test([by["adr"][s][k] for s in seeds], [by["at"][s][k] for s in seeds])
        out[k] = {"diff": t.diff, "std": t.std, "p": t.p, "n": t.n}
        print(f"ADR - AT {k}: {100 * t.diff:+.2f} +- {100 * t.std:.2f} (paired over seeds "
              f"{seeds}, p = {t.p:.3f})")
    return out


def record(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    stats = print_table(runs, args.methods)
    command = " ".join(["python benchmarks/overfit_digits.py", f"--preset {args.preset}",
                        "--seeds", *map(str, args.seeds), "--methods", *args.methods,
                        *(f"--set {s}" for s in args.set)])
    return {"preset": args.preset, "overrides": args.set, "seeds": args.seeds,
            "git_revision": short_revision(), "command": command, "mean_std": stats,
            "adr_minus_at": paired(runs), "runs": runs}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for method in args.methods:
            for seed in args.seeds:
                runs.append(run_one(args.preset, method, seed, args.set,
                                    root / f"{method}-seed{seed}"))
                r = runs[-1]
                print(f"{method} seed {seed}: best {100 * r['best_val_robust_acc']:.2f} (epoch "
                      f"{r['best_epoch']}) final {100 * r['final_val_robust_acc']:.2f} gap "
                      f"{100 * r['gap']:.2f} smoothed {100 * r['smoothed_gap']:.2f} "
                      f"({r['seconds']} s)", flush=True)
    rec = record(args, runs)
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
