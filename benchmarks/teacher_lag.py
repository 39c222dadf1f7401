"""How far the EMA teacher lags the student in a short run, with and without EMA warm-up.

Trains the smoke preset with ADR for a few epochs in-process per seed, once with the plain EMA
(adr.ema_decay) and once with Wang et al.'s warm-up (adr.ema_warmup=true), and prints the
teacher's and the student's validation clean accuracy after every epoch: a search trial shorter
than the EMA's horizon (~1 / (1 - decay) steps) otherwise trains against a near-random teacher.

Examples:
  python benchmarks/teacher_lag.py                     # smoke, 4 epochs, seeds 0 1 2 (~1 min)
  python benchmarks/teacher_lag.py --epochs 6 --seeds 0 1 2 3 4 --json /tmp/lag.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from adr_scale.config import apply_overrides, get_preset
from adr_scale.drivers import fit
from adr_scale.run.provenance import git_revision


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="smoke")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", help="also write the numbers here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict[int, dict[str, list[float]]]] = {}
    for warmup in (False, True):
        label = "warm-up" if warmup else "no warm-up"
        results[label] = {}
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = apply_overrides(get_preset(args.preset), [
                    "train.device=cpu", f"train.epochs={args.epochs}", f"seed={seed}",
                    "adr.enabled=true", f"adr.ema_warmup={str(warmup).lower()}"])
                fit(cfg, Path(tmp) / "run", progress=False)
                rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
            results[label][seed] = {"teacher": [r["val_clean_acc_ema"] for r in rows],
                                    "student": [r["val_clean_acc_student"] for r in rows]}
            print(f"{label:10s} seed {seed}: teacher clean "
                  + " ".join(f"{v:.3f}" for v in results[label][seed]["teacher"]) + "   student "
                  + " ".join(f"{v:.3f}" for v in results[label][seed]["student"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"git": git_revision(), "args": vars(args),
                                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
