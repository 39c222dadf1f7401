"""Cost of one training step per method, measured side by side in one process.

Prints the step time of AT, AT+ADR, TRADES, TRADES+ADR, AT+AWP and AT+AWP+ADR, the ratio ADR / AT
(goal <= 1.03; the paper's Table 6 has 83 / 81 = 1.025 on ResNet-18, RTX A6000) and the ratio of
an AT step to its ideal cost, measured in the same process: 11 forward+backward passes (10 attack
steps + 1 update) for AT, plus 1 forward (the EMA teacher) for AT+ADR (goal <= 1.15).

Examples:
  python benchmarks/step_cost.py                                    # CPU: resnet18, batch 16
  python benchmarks/step_cost.py --device cuda --batch-size 128 --precision bf16 --channels-last
  python benchmarks/step_cost.py --arch tiny --dataset digits --batch-size 64 --rounds 20
  python benchmarks/step_cost.py --compile --variants AT   # compiled vs eager AT, CPU: minutes to compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from adr_scale.config import RunConfig, apply_overrides, get_preset, to_dict
from adr_scale.data import DATASET_INFO
from adr_scale.engine import build_state, resolve_device, train_step
from adr_scale.run.provenance import short_revision as git_revision

VARIANTS = {  # name -> overrides of the base config
    "AT": ["train.method=at", "adr.enabled=false", "awp.enabled=false"],
    "AT+ADR": ["train.method=at", "adr.enabled=true", "awp.enabled=false"],
    "TRADES": ["train.method=trades", "adr.enabled=false", "awp.enabled=false"],
    "TRADES+ADR": ["train.method=trades", "adr.enabled=true", "awp.enabled=false"],
    "AT+AWP": ["train.method=at", "adr.enabled=false", "awp.enabled=true"],
    "AT+AWP+ADR": ["train.method=at", "adr.enabled=true", "awp.enabled=true"],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--dataset", default="cifar10", help="shape and classes of the random data")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 16 on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the student; also times the eager AT step in the same run")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated subset of " + ", ".join(VARIANTS) + " (AT is always timed)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds; default 20 CUDA, 3 CPU")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", help="also write the results (with config and git revision) here")
    return p.parse_args()


def base_config(args: argparse.Namespace, device: torch.device) -> RunConfig:
    batch = args.batch_size or (128 if device.type == "cuda" else 16)
    return apply_overrides(get_preset("cifar10_resnet18_at"), [
        f"data.dataset={args.dataset}", f"model.arch={args.arch}", f"train.batch_size={batch}",
        f"train.device={device}", f"train.precision={args.precision}",
        f"train.channels_last={str(args.channels_last).lower()}",
        f"train.compile={str(args.compile).lower()}"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def make_step(cfg: RunConfig, device: torch.device) -> Callable[[], object]:
    info = DATASET_INFO[cfg.data.dataset]
    state = build_state(cfg, info, n_train=50_000, device=device)
    size = info.image_size
    images = torch.randint(0, 256, (cfg.train.batch_size, info.in_channels, size, size),
                           dtype=torch.uint8, device=device)
    labels = torch.randint(0, info.num_classes, (cfg.train.batch_size,), device=device)
    return lambda: train_step(state, images, labels)


def make_passes(cfg: RunConfig, device: torch.device) -> dict[str, Callable[[], object]]:
    """The ideal's building blocks on the same model: a training forward+backward, a forward."""
    info = DATASET_INFO[cfg.data.dataset]
    state = build_state(cfg, info, n_train=50_000, device=device)
    x = torch.rand(cfg.train.batch_size, info.in_channels, info.image_size, info.image_size,
                   device=device)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, info.num_classes, (cfg.train.batch_size,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16,
                         enabled=cfg.train.precision == "bf16")

    def fwd_bwd() -> None:
        state.model.train()
        with amp:
            loss = torch.nn.functional.cross_entropy(state.model(x).float(), y)
        loss.backward()

    @torch.no_grad()
    def fwd() -> None:
        with amp:
            state.ema(x)

    return {"fwd+bwd": fwd_bwd, "fwd": fwd}


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    rounds = args.rounds or (20 if device.type == "cuda" else 3)
    cfg = base_config(args, device)
    chosen = ["AT"] + [v for v in args.variants.split(",") if v in VARIANTS and v != "AT"]
    fns = {name: make_step(apply_overrides(cfg, VARIANTS[name]), device) for name in chosen}
    fns |= make_passes(cfg, device)
    if args.compile:  # the same step uncompiled, timed in the same rounds
        eager = apply_overrides(cfg, ["train.compile=false"])
        fns["AT eager"] = make_step(apply_overrides(eager, VARIANTS["AT"]), device)
        fns["fwd+bwd eager"] = make_passes(eager, device)["fwd+bwd"]
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):  # interleaved, so drifts in clock or load hit every variant alike
        for name, fn in fns.items():
            samples[name].append(timed(fn, device))
    med = {name: statistics.median(v) for name, v in samples.items()}
    spread = {name: (min(v), max(v)) for name, v in samples.items()}
    ideal_at = 11 * med["fwd+bwd"]
    ideal_adr = ideal_at + med["fwd"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}  arch {args.arch}  batch {cfg.train.batch_size}  {args.precision}"
          f"{'  channels_last' if args.channels_last else ''}{'  compile' if args.compile else ''}"
          f"  median of {rounds} rounds")
    for key in fns:
        lo, hi = spread[key]
        print(f"  {key:14s} {med[key] * 1e3:10.2f} ms  (min {lo * 1e3:.2f}, max {hi * 1e3:.2f})"
              + (f"  {cfg.train.batch_size / med[key]:9.0f} img/s" if "fwd" not in key else ""))
    ratios = {"AT/ideal(11 fb)": med["AT"] / ideal_at}
    for name, num, den in (("ADR/AT", "AT+ADR", "AT"), ("TRADES+ADR/TRADES", "TRADES+ADR", "TRADES"),
                           ("AWP+ADR/AWP", "AT+AWP+ADR", "AT+AWP")):
        if num in med and den in med:
            ratios[name] = med[num] / med[den]
    if "AT+ADR" in med:
        ratios["AT+ADR/ideal(11 fb + 1 f)"] = med["AT+ADR"] / ideal_adr
    if args.compile:
        ratios["AT compiled/eager"] = med["AT"] / med["AT eager"]
        ratios["AT eager/ideal eager(11 fb)"] = med["AT eager"] / (11 * med["fwd+bwd eager"])
    for key, value in ratios.items():
        print(f"  ratio {key:28s} {value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": name, "git": git_revision(), "torch": torch.__version__, "rounds": rounds,
            "median_s": med, "min_max_s": spread, "ratios": ratios, "config": to_dict(cfg)},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
