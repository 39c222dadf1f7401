"""Training throughput (samples/s) of 1 and 2 Ray Train workers on the same global batch.

Each run trains `--steps` optimizer steps of PGD-AT + ADR through `adr_scale.drivers.launch` (the
product's own code path) on the bundled digits; throughput is the training part of each epoch
(validation excluded), as recorded in metrics.jsonl. Both runs happen in one process, one after
the other, on the same local Ray cluster, and the ratio is printed.

Examples:
  python benchmarks/scaling.py                                   # CPU: resnet18, batch 64
  python benchmarks/scaling.py --gpus-per-worker 1 --batch-size 512 --steps 50
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from adr_scale.config import apply_overrides, get_preset


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=36, help="steps per run (2 epochs at batch 64)")
    p.add_argument("--workers", default="1,2", help="comma list of worker counts")
    p.add_argument("--gpus-per-worker", type=float, default=0)
    return p.parse_args()


def throughput(rows: list[dict], batch_size: int) -> float:
    """Samples/s over every epoch but the first (which includes start-up and first-call costs)."""
    timed = rows[1:] or rows
    samples = sum(r["steps_in_epoch"] * batch_size for r in timed)
    seconds = sum(r["steps_in_epoch"] * batch_size / r["samples_per_s"] for r in timed)
    return samples / seconds


def main() -> None:
    import ray

    from adr_scale.drivers import launch

    args = parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    cfg = apply_overrides(get_preset("smoke"), [
        f"model.arch={args.arch}", f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.steps}", "train.epochs=1000", "data.val_size=64",
        "attack.eval_steps=1"])
    ray.init(num_cpus=max(counts) + 1, log_to_driver=False)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in counts:
            out = Path(tmp) / f"w{workers}"
            launch(cfg, out, workers=workers, gpus_per_worker=args.gpus_per_worker,
                   max_failures=0, progress=False)
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            results[workers] = throughput(rows, args.batch_size)
            print(f"{workers} worker(s): {results[workers]:8.1f} samples/s  "
                  f"({args.arch}, global batch {args.batch_size}, {args.steps} steps)")
    base = counts[0]
    for workers in counts[1:]:
        print(f"ratio {workers} / {base} workers: {results[workers] / results[base]:.2f} "
              f"(ideal {workers / base:.0f})")


if __name__ == "__main__":
    main()
