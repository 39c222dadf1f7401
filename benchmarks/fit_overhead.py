"""Where one TorchTrainer.fit of a tiny 1-epoch run spends its time, and what Ray Train settings cut it.

Each run is `adr_scale.drivers.launch` (the product's path: make_trainer, the worker loop, the run
directory callback) on the smoke preset for one epoch, 1 worker, on one local Ray started once.
Variants differ only in Ray Train environment variables, which a fit reads when it starts (the
driver reads RAY_TRAIN_METRICS_ENABLED; the controller and its workers get the others through
the runtime environment Ray Train propagates), so they are interleaved round by round in one
process and the medians are compared. Per run, ray.timeline() splits the wall time into: the
controller actor's start (process spawn + `import ray.train`), its __init__ (unpickling the
trainer: imports torch), the time until the worker's init_train_context starts (placement group,
worker process spawn), that call (unpickling the loop: imports torch and adr_scale), the epoch
itself (metrics.jsonl `seconds`), and the rest (reports, checkpoint upload, polling, shutdown).

Examples:
  python benchmarks/fit_overhead.py                        # default, tests, lean; 3 rounds
  python benchmarks/fit_overhead.py --rounds 5 --variants tests,lean --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from adr_scale.config import apply_overrides, get_preset

# What each variant sets on top of Ray's defaults (None: leave Ray's default).
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},  # what a user gets: the controller polls its workers every 2 s
    "tests": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},  # tests/conftest.py before this change
    "lean": {  # tests/conftest.py now: no actors or threads that a 1-node CPU test never uses
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # a polling actor per worker group (spot nodes)
        "RAY_TRAIN_METRICS_ENABLED": "0",  # Prometheus gauges in controller and workers
        "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",  # JSON log files per run
        "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
    },
}
PHASES = ("controller_start", "controller_init", "to_worker_init", "worker_init", "epoch", "rest")
TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, CPU ticks incl. reaped children, title) for every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]), title)
    return table


def _descendants(table: dict[int, tuple[int, int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class ProcessSampler:
    """Every 0.5 s, the CPU seconds of each process of this tree: which processes a fit starts
    and what each costs (its last sample before it exits)."""

    def __init__(self) -> None:
        import threading

        self.seen: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.before = {pid: row for pid, row in _proc_table().items()}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            table = _proc_table()
            for pid in _descendants(table):
                if pid in table and (pid not in self.before or self.before[pid][2] != table[pid][2]):
                    title = table[pid][2] or self.seen.get(pid, ("?", 0))[0]  # "" once exiting
                    self.seen[pid] = (title, table[pid][1] / TICK)

    def by_title(self) -> dict[str, tuple[int, float]]:
        """title -> (processes started, their CPU seconds), for processes new in this window."""
        self.stop.set()
        self.thread.join()
        out: dict[str, tuple[int, float]] = {}
        for title, cpu in self.seen.values():
            n, c = out.get(title, (0, 0.0))
            out[title] = (n + 1, c + cpu)
        return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def tree_cpu_s() -> float:
    """CPU seconds used so far by this process and everything it started (local Ray's raylet,
    GCS, dashboard, and their workers; ended processes count through their parent's cutime once
    reaped). On a shared, loaded machine wall time mostly measures the other jobs; this does not."""
    table = _proc_table()
    return sum(table[pid][1] for pid in _descendants(table) if pid in table) / TICK


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="runs per variant, interleaved")
    p.add_argument("--variants", default="default,tests,lean", help=f"of {', '.join(VARIANTS)}")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", help="write every run and the medians here")
    return p.parse_args()


def _events(start: float, end: float) -> list[tuple[float, float, str]]:
    """(start s, duration s, name) of the timeline's task and actor-method spans in a window."""
    import ray

    spans = []
    for e in ray.timeline():
        if e.get("ph") != "X" or not str(e.get("cat", "")).startswith("task::"):
            continue
        t = e["ts"] / 1e6
        if start <= t <= end:
            spans.append((t, e["dur"] / 1e6, e["cat"][len("task::"):]))
    return sorted(spans)


def phases(start: float, end: float, epoch_s: float) -> dict[str, float]:
    spans = _events(start, end)

    def first(name: str) -> tuple[float, float]:
        return next(((t, d) for t, d, n in spans if n == name), (float("nan"), float("nan")))

    c_t, c_d = first("TrainController.__init__")
    w_t, w_d = first("RayTrainWorker.init_train_context")
    out = {"controller_start": c_t - start, "controller_init": c_d,
           "to_worker_init": w_t - (c_t + c_d), "worker_init": w_d, "epoch": epoch_s}
    out["rest"] = (end - start) - sum(out.values())
    return out


def main() -> None:
    import ray

    from adr_scale.drivers import launch

    args = parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: --variants: {unknown[0]!r}; allowed: {', '.join(VARIANTS)}")
    cfg = apply_overrides(get_preset("smoke"), ["train.epochs=1", "train.device=cpu"])
    touched = {k for v in VARIANTS.values() for k in v}
    saved = {k: os.environ.pop(k) for k in touched if k in os.environ}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=args.workers + 2, include_dashboard=True, log_to_driver=False)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for name in names:
                os.environ.update(VARIANTS[name])
                out = Path(tmp) / f"{name}-{i}"
                sampler = ProcessSampler()
                c0, t0 = tree_cpu_s(), time.time()
                launch(cfg, out, workers=args.workers, max_failures=0, progress=False)
                t1 = time.time()
                time.sleep(2)  # the fit's actors exit and are reaped: their CPU lands in cutime
                c1 = tree_cpu_s()
                procs = sampler.by_title()
                for k in VARIANTS[name]:
                    del os.environ[k]
                epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["seconds"]
                runs.append({"variant": name, "round": i, "wall_s": t1 - t0, "cpu_s": c1 - c0,
                             **phases(t0, t1, epoch), "new_processes": procs})
                print(f"round {i} {name:8s} cpu {c1 - c0:6.2f} s wall {t1 - t0:6.2f} s  " + "  ".join(
                    f"{k} {runs[-1][k]:5.2f}" for k in PHASES), flush=True)
                print("    new processes (count, CPU s): " + ", ".join(
                    f"{t} {n} {c:.1f}" for t, (n, c) in procs.items()), flush=True)
    ray.shutdown()
    os.environ.update(saved)
    medians = {n: {k: statistics.median(r[k] for r in runs if r["variant"] == n)
                   for k in ("cpu_s", "wall_s", *PHASES)} for n in names}
    print("\nmedian over", args.rounds, "rounds (s):", " ".join(f"{k:>9s}" for k in ("cpu_s", "wall_s", *PHASES)))
    for n in names:
        print(f"  {n:8s}", " ".join(f"{medians[n][k]:9.2f}" for k in ("cpu_s", "wall_s", *PHASES)))
    base = "tests" if "tests" in names else names[0]
    for n in names:
        if n != base:
            print(f"{n} / {base}: cpu {medians[n]['cpu_s'] / medians[base]['cpu_s']:.3f}, "
                  f"wall {medians[n]['wall_s'] / medians[base]['wall_s']:.3f}")
    if args.json:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        Path(args.json).write_text(json.dumps({
            "git": git, "variants": {n: VARIANTS[n] for n in names}, "workers": args.workers,
            "config": "smoke, train.epochs=1, train.device=cpu", "runs": runs,
            "medians": medians, "load_avg_end": os.getloadavg()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
