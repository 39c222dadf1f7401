"""Seconds per CIFAR-shaped epoch of adversarial training on one GPU, next to the paper's Table 6.

One epoch = 50,000 random uint8 images 3x32x32 (10 classes) at batch 128 by default, fed exactly as training
feeds them (`train_batches` over a dataset held on the GPU, then the engine's `train_step`: ADR
label, 10-step PGD, AWP, update, EMA). Methods: AT, AT+ADR, AT+AWP, AT+AWP+ADR. Settings: fp32,
bf16 autocast, bf16 + channels_last, bf16 + channels_last + torch.compile ("fp32" convolutions
run in TF32 on Ampere and newer, PyTorch's default, as in training).

How an epoch is timed: after --warmup steps (torch.compile compiles there), each
of --repeats windows times --steps consecutive steps between two CUDA synchronisations;
s/epoch = window seconds / steps x steps per epoch (50,000 // 128 = 390 full batches, the engine's
epoch). --full-epoch times all 390 steps instead of extrapolating. Validation and checkpointing
are not included there. The paper's numbers (Table 6, one RTX A6000, batch 128) are printed beside
ours; the goal for this project is <= 15 s per ResNet-18 epoch on one H100.

--full-run also times one whole epoch of the DDPM setting as training runs it: batch 1024 with
768 synthetic images per step drawn from a decoded cache (built from real shards first, timed
too), the engine's train_epoch, validation of student and EMA on 1,000 images, and one checkpoint
written to disk (seconds and MB), with cuDNN autotuning as the engine sets it.

On a machine without CUDA it says so and exits 0; --cpu-smoke runs two tiny steps per method and
setting on the CPU (tiny network; bf16, channels_last and torch.compile with the aot_eager
backend, which traces the same graphs without generating code) to prove the code path, and
measures nothing worth comparing.

Examples:
  python benchmarks/gpu_epoch.py                                   # every method x setting
  python benchmarks/gpu_epoch.py --settings bf16+cl+compile --full-epoch --json h100.json
  python benchmarks/gpu_epoch.py --arch wrn34_10 --steps 20        # against Table 6's 575-695 s
  python benchmarks/gpu_epoch.py --methods AT+ADR --settings bf16+cl --full-run --steps 20
  python benchmarks/gpu_epoch.py --cpu-smoke --full-run            # no GPU: exercise the path
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adr_scale.config import RunConfig, apply_overrides, get_preset, to_dict
from adr_scale.data import DATASET_INFO, ArrayDataset, steps_per_epoch, train_batches
from adr_scale.engine import build_state, train_step
from adr_scale.run.provenance import short_revision as git_revision

N_IMAGES = 50_000  # one CIFAR-10/100 training set
GOAL_S = 15.0  # s per ResNet-18 epoch on one H100 (project goal)

METHODS = {  # name -> overrides of cifar10_resnet18_at; AWP active from step 0
    "AT": ["adr.enabled=false", "awp.enabled=false"],
    "AT+ADR": ["adr.enabled=true", "awp.enabled=false"],
    "AT+AWP": ["adr.enabled=false", "awp.enabled=true", "awp.warmup_epochs=0"],
    "AT+AWP+ADR": ["adr.enabled=true", "awp.enabled=true", "awp.warmup_epochs=0"],
}
SETTINGS = {
    "fp32": ["train.precision=fp32", "train.channels_last=false", "train.compile=false"],
    "bf16": ["train.precision=bf16", "train.channels_last=false", "train.compile=false"],
    "bf16+cl": ["train.precision=bf16", "train.channels_last=true", "train.compile=false"],
    "bf16+cl+compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
}
# Paper Table 6: seconds per epoch on one NVIDIA RTX A6000, batch 128.
PAPER_A6000_S = {
    ("cifar10", "resnet18"): {"AT": 81, "AT+ADR": 83, "AT+AWP": 92, "AT+AWP+ADR": 93},
    ("cifar10", "wrn34_10"): {"AT": 575, "AT+ADR": 610, "AT+AWP": 650, "AT+AWP+ADR": 695},
    ("cifar100", "resnet18"): {"AT": 81, "AT+ADR": 83, "AT+AWP": 91, "AT+AWP+ADR": 93},
    ("cifar100", "wrn34_10"): {"AT": 586, "AT+ADR": 598, "AT+AWP": 661, "AT+AWP+ADR": 672},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=None, help="default: resnet18 (tiny with --cpu-smoke)")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"],
                   help="shape and number of classes of the random data")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of "
                   + ", ".join(METHODS))
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of "
                   + ", ".join(SETTINGS))
    p.add_argument("--steps", type=int, default=100, help="timed steps per window")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before the first window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per method and setting")
    p.add_argument("--full-epoch", action="store_true", help="time whole epochs (--steps = 390)")
    p.add_argument("--cudnn-benchmark", choices=["on", "off"], default="on",
                   help="cuDNN autotuning; training turns it on (build_state), off shows the gain")
    p.add_argument("--full-run", action="store_true",
                   help="also time one DDPM-setting epoch: synthetic cache, validation, checkpoint")
    p.add_argument("--synthetic-images", type=int, default=20000,
                   help="images in the shards of --full-run (the cache build is timed)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU: two tiny fp32 steps per method on the CPU (proves the code path)")
    p.add_argument("--json", help="write results, device, torch version, git revision, config here")
    args = p.parse_args(argv)
    args.methods = _subset(p, args.methods, METHODS, "--methods")
    args.settings = _subset(p, args.settings, SETTINGS, "--settings")
    for flag in ("batch_size", "steps", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: must be >= 1")
    return args


def _subset(parser: argparse.ArgumentParser, text: str, allowed: dict[str, Any], flag: str,
            ) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        parser.error(f"{flag}: unknown {unknown or 'empty list'}; allowed: " + ", ".join(allowed))
    return names


def run_config(args: argparse.Namespace, method: str, setting: str, device: torch.device,
               ) -> RunConfig:
    backend = ["train.compile_backend=aot_eager"] if args.cpu_smoke else []
    return apply_overrides(get_preset("cifar10_resnet18_at"), [
        f"data.dataset={args.dataset}", f"model.arch={args.arch}", "train.method=at",
        f"train.batch_size={args.batch_size}", f"train.device={device}",
        *METHODS[method], *SETTINGS[setting], *backend])


def random_epoch(args: argparse.Namespace, device: torch.device) -> ArrayDataset:
    info = DATASET_INFO[args.dataset]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N_IMAGES, info.in_channels, info.image_size, info.image_size),
                           dtype=torch.uint8, generator=g)
    labels = torch.randint(0, info.num_classes, (N_IMAGES,), generator=g)
    return ArrayDataset(images.to(device), labels.to(device))  # held on the GPU, as train.py does


def endless_batches(data: ArrayDataset, cfg: RunConfig, device: torch.device):
    epoch = 0
    while True:
        yield from train_batches(data, cfg.train.batch_size, cfg.seed, epoch, device)
        epoch += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: RunConfig, data: ArrayDataset, device: torch.device, *, warmup: int, steps: int,
            repeats: int, cudnn_benchmark: bool = True) -> dict[str, Any]:
    """Time `repeats` windows of `steps` train_step calls after `warmup` untimed ones."""
    info = DATASET_INFO[cfg.data.dataset]
    state = build_state(cfg, info, n_train=len(data), device=device)
    torch.backends.cudnn.benchmark = cudnn_benchmark  # after build_state, which turns it on
    batches = endless_batches(data, cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        train_step(state, *next(batches))
    windows = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = train_step(state, *next(batches))
        sync(device)
        windows.append(time.perf_counter() - start)
    assert torch.isfinite(loss), "training diverged on random data: the timing means nothing"
    spe = steps_per_epoch(len(data), cfg.train.batch_size)
    per_epoch = [w / steps * spe for w in windows]
    return {
        "window_s": windows, "steps_per_window": steps, "steps_per_epoch": spe,
        "s_per_epoch_median": statistics.median(per_epoch),
        "s_per_epoch_min": min(per_epoch), "s_per_epoch_max": max(per_epoch),
        "images_per_s": cfg.train.batch_size * steps / statistics.median(windows),
        "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else None),
    }


def measure_full_epoch(args: argparse.Namespace, method: str, setting: str, data: ArrayDataset,
                       device: torch.device, tmp: Path) -> dict[str, Any]:
    """One DDPM-setting epoch as training runs it: cache build, steps, validation, checkpoint."""
    import numpy as np

    from adr_scale.checkpoint import checkpoint_state
    from adr_scale.data.mixing import open_synthetic
    from adr_scale.data.synthetic import SyntheticSet
    from adr_scale.engine import schedule_length, train_epoch, validate_models
    from data_pipeline.shard_npz import shard_npz

    info = DATASET_INFO[args.dataset]
    shards = tmp / "shards"
    if not (shards / "manifest.parquet").is_file():
        rng = np.random.default_rng(0)
        n = args.synthetic_images
        np.savez(tmp / "synthetic.npz", label=rng.integers(0, info.num_classes, n),
                 image=rng.integers(0, 256, (n, info.image_size, info.image_size, info.in_channels),
                                    dtype=np.uint8))
        shard_npz(str(tmp / "synthetic.npz"), shards, 10000, progress=False)
    start = time.perf_counter()
    built = SyntheticSet(shards, tmp / "cache", tar_reader="fast", progress=False).built
    open_s = time.perf_counter() - start  # the first call builds the cache, later ones map it
    batch = 16 if args.cpu_smoke else 1024
    cfg = apply_overrides(run_config(args, method, setting, device), [
        f"data.synthetic={shards}", f"data.synthetic_cache={tmp / 'cache'}",
        "data.synthetic_fraction=0.75", f"train.batch_size={batch}", "attack.eval_steps=10"])
    if args.cpu_smoke:
        cfg = apply_overrides(cfg, ["train.max_steps=2"])
    state = build_state(cfg, info, n_train=len(data), device=device)
    loader = open_synthetic(cfg, info, device=device)
    n_val = 64 if args.cpu_smoke else 1000
    val = ArrayDataset(data.images[:n_val], data.labels[:n_val])
    timings: dict[str, Any] = {"cache_built": built, "cache_open_s": open_s,
                               "synthetic_images": len(loader.synth), "batch_size": batch,
                               "steps_per_epoch": schedule_length(cfg, len(data))[0]}
    for name, fn in (("epoch_s", lambda: train_epoch(state, data, synthetic=loader)),
                     ("validation_s", lambda: validate_models(state, val))):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        timings[name] = time.perf_counter() - t0
        if name == "epoch_s":
            timings["steps"] = out["steps_in_epoch"]
    t0 = time.perf_counter()
    torch.save(checkpoint_state(state), tmp / "checkpoint.pt")
    timings["checkpoint_s"] = time.perf_counter() - t0
    timings["checkpoint_mb"] = (tmp / "checkpoint.pt").stat().st_size / 2**20
    timings["total_s"] = timings["epoch_s"] + timings["validation_s"] + timings["checkpoint_s"]
    return timings


def release(device: torch.device) -> None:
    """Free the last state and compiled graphs, so every measurement starts alike."""
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor()})",
        "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32_conv": torch.backends.cudnn.allow_tf32 if cuda else None,  # PyTorch default: on
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None,  # default: off
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "python": platform.python_version(), "git": git_revision(), "argv": sys.argv[1:],
    }


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, env: dict[str, Any],
                spe: int, steps: int) -> None:
    paper = PAPER_A6000_S.get((args.dataset, args.arch), {})
    print(f"device {env['device']}  torch {env['torch']}  git {env['git']}  "
          f"{args.arch} on {args.dataset}-shaped random data, batch {args.batch_size}")
    print(f"s/epoch = seconds per {steps}-step window / {steps} x {spe} steps "
          f"({N_IMAGES:,} // {args.batch_size}); median [min, max] of {args.repeats} windows "
          f"after {args.warmup} warm-up steps; no validation or checkpointing")
    print(f"  {'setting':16s} {'method':11s} {'img/s':>8s} {'s/epoch':>8s} {'[min, max]':>16s}"
          f" {'GiB':>6s}   {'paper A6000 s/epoch':>19s}")
    for r in rows:
        m = r["result"]
        mem = f"{m['peak_memory_gib']:6.1f}" if m["peak_memory_gib"] is not None else "     -"
        ref = paper.get(r["method"])
        print(f"  {r['setting']:16s} {r['method']:11s} {m['images_per_s']:8.0f} "
              f"{m['s_per_epoch_median']:8.2f} [{m['s_per_epoch_min']:6.2f}, "
              f"{m['s_per_epoch_max']:6.2f}] {mem}   {ref if ref else '-':>19}")
    by = {(r["setting"], r["method"]): r["result"]["s_per_epoch_median"] for r in rows}
    for setting in args.settings:
        for num, den, ref in (("AT+ADR", "AT", "83/81 = 1.025"),
                              ("AT+AWP+ADR", "AT+AWP", "93/92 = 1.011")):
            if (setting, num) in by and (setting, den) in by:
                print(f"  ratio {setting:16s} {num}/{den}: {by[setting, num] / by[setting, den]:.3f}"
                      f"   (paper, CIFAR-10 ResNet-18: {ref})")


def goal_line(rows: list[dict[str, Any]], args: argparse.Namespace, env: dict[str, Any]) -> str:
    best = min(rows, key=lambda r: r["result"]["s_per_epoch_median"])
    s = best["result"]["s_per_epoch_median"]
    verdict = "met" if s <= GOAL_S else "NOT met"
    on_h100 = "H100" in env["device"]
    return (f"goal <= {GOAL_S:.0f} s per ResNet-18 epoch on one H100: {verdict} by "
            f"{best['setting']} {best['method']} at {s:.2f} s"
            + ("" if on_h100 else f" (but this device is {env['device']}, not an H100)"))


def shrink_to_cpu_smoke(args: argparse.Namespace) -> None:
    """Tiny and quick: proves the harness, gives no number to compare."""
    args.arch = args.arch or "tiny"
    args.batch_size, args.warmup, args.repeats = 8, 1, 1
    args.steps, args.full_epoch = 2, False
    args.synthetic_images = min(args.synthetic_images, 2000)
    torch.set_num_threads(1)  # on shared cores, OpenMP threads mostly wait for each other
    print(f"--cpu-smoke: {args.arch}, batch 8, 2 steps per method and setting on the CPU "
          "(torch.compile with the aot_eager backend)")


def write_json(path: str, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA GPU on this machine: nothing measured (this benchmark is for one GPU).\n"
              "Paper, Table 6 (one RTX A6000, batch 128, CIFAR-10 ResNet-18): AT 81, AT+ADR 83, "
              f"AT+AWP 92, AT+AWP+ADR 93 s/epoch. Project goal: <= {GOAL_S:.0f} s/epoch on one "
              "H100.\nRun it on a GPU machine, or add --cpu-smoke to exercise the code path here.")
        if args.json:
            write_json(args.json, {"measured": False, "reason": "no CUDA device",
                                   **environment(torch.device("cpu"))})
        return 0
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.cpu_smoke:
        shrink_to_cpu_smoke(args)
    args.arch = args.arch or "resnet18"
    data = random_epoch(args, device)
    spe = steps_per_epoch(N_IMAGES, args.batch_size)
    steps = spe if args.full_epoch else args.steps
    rows = []
    for setting in args.settings:
        for method in args.methods:
            cfg = run_config(args, method, setting, device)
            result = measure(cfg, data, device, warmup=args.warmup, steps=steps,
                             repeats=args.repeats, cudnn_benchmark=args.cudnn_benchmark == "on")
            rows.append({"setting": setting, "method": method, "result": result,
                         "config": to_dict(cfg)})
            release(device)
    env = environment(device)
    print_table(rows, args, env, spe, steps)
    full_runs = []
    if args.full_run:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gpu_epoch-") as tmp:
            for setting in args.settings:
                for method in args.methods:
                    timing = measure_full_epoch(args, method, setting, data, device, Path(tmp))
                    full_runs.append({"setting": setting, "method": method, **timing})
                    release(device)
                    print(f"  full DDPM-setting epoch, {setting} {method}: {timing['steps']} steps "
                          f"of {timing['batch_size']} (75 % synthetic) {timing['epoch_s']:.2f} s, "
                          f"validation {timing['validation_s']:.2f} s, checkpoint "
                          f"{timing['checkpoint_s']:.2f} s ({timing['checkpoint_mb']:.0f} MB); "
                          f"cache {'build' if timing['cache_built'] else 'map'} of "
                          f"{timing['synthetic_images']:,} images {timing['cache_open_s']:.2f} s")
    if args.cpu_smoke:
        print("cpu-smoke: the code path ran; these CPU numbers are not comparable to Table 6")
    elif args.arch == "resnet18":
        print(goal_line(rows, args, env))
    if args.json:
        write_json(args.json, {
            "measured": not args.cpu_smoke, **env, "arch": args.arch, "dataset": args.dataset,
            "batch_size": args.batch_size, "n_images": N_IMAGES, "steps_per_epoch": spe,
            "warmup": args.warmup, "repeats": args.repeats, "timed_steps": steps,
            "paper_a6000_s_per_epoch": PAPER_A6000_S.get((args.dataset, args.arch)),
            "goal_s_per_epoch_h100": GOAL_S, "results": rows, "full_runs": full_runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
