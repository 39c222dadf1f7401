"""Cost of the synthetic-data path, each number next to its baseline measured in the same run.

1. read: images/s on ONE core (torch single-threaded, no loader workers) to read shards, decode the
   PNGs and augment (crop + flip) with adr_scale.data.synthetic.SyntheticStream, versus the same
   augmentation of batches gathered from an in-memory uint8 tensor (the real-data path). Goal:
   >= 20k images/s per core for 32x32x3; printed as stream / in-memory.
2. shard_npz peak RSS (VmHWM of a fresh process) at two file sizes, stored and deflated, next
   to np.load of the larger file and to the imports alone. Goal: flat in the file size.
3. generation: images/s of the tiny random UNet (3x32x32, 42k parameters) on one CPU core, DDPM with
   1000 steps versus DDIM with 100, a few images (it measures the pipeline, not a real model).

Examples:
  python benchmarks/data_throughput.py                       # all three, about 5 minutes on a CPU
  python benchmarks/data_throughput.py --only read --read-images 50000
  python benchmarks/data_throughput.py --rss-sizes 20000 200000 --json /tmp/data_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # data_pipeline, when the editable install predates it

from adr_scale.data import ArrayDataset, augment, to_float, train_batches  # noqa: E402
from adr_scale.data.synthetic import SyntheticStream  # noqa: E402
from data_pipeline.shard_npz import shard_npz  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["read", "rss", "generate"], action="append",
                   help="run only these parts (repeatable)")
    p.add_argument("--read-images", type=int, default=20000, help="images in the read benchmark")
    p.add_argument("--batch-size", type=int, default=512, help="read benchmark batch")
    p.add_argument("--rss-sizes", type=int, nargs=2, default=[10000, 100000],
                   help="images in the two .npz files of the RSS benchmark (32x32x3)")
    p.add_argument("--gen-images", type=int, default=8, help="images per scheduler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results (with git revision) here")
    return p.parse_args()


def natural_images(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 32, 32, 3) with smooth structure plus noise: PNG sizes close to CIFAR's (~2-3 kB);
    pure noise would compress (and decode) worse than real or generated images."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 32, 32, 3), np.uint8)
    for start in range(0, n, 4096):
        b = min(4096, n - start)
        coarse = rng.integers(0, 256, (b, 4, 4, 3)).astype(np.float32)
        smooth = coarse.repeat(8, 1).repeat(8, 2)  # (b, 32, 32, 3) blocks
        noise = rng.normal(0, 12, smooth.shape)
        out[start:start + b] = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# 1. read + decode + augment


def _rate(images: int, fn, rounds: int = 3) -> tuple[float, float]:
    """(images per CPU-second of this process, images per wall-second) of fn(), the median of
    `rounds` runs (the machine may be shared: CPU time is the per-core figure)."""
    cpu_s, wall_s = [], []
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        cpu_s.append(time.process_time() - cpu)
        wall_s.append(time.perf_counter() - wall)
    return images / statistics.median(cpu_s), images / statistics.median(wall_s)


def bench_read(args, tmp: Path) -> dict:
    import webdataset as wds

    from adr_scale.data.synthetic import _tar_samples

    n, b = args.read_images, args.batch_size
    images = natural_images(n, args.seed)
    np.savez(tmp / "read.npz", image=images, label=np.arange(n) % 10)
    shard_npz(str(tmp / "read.npz"), tmp / "read", 10000, progress=False)
    urls = sorted(str(p) for p in (tmp / "read").glob("shard-*.tar"))
    tar_bytes = sum(os.path.getsize(u) for u in urls)
    batches = n // b
    torch.manual_seed(args.seed)
    stream = SyntheticStream(tmp / "read", b, seed=args.seed)
    list(stream.epoch(99, 2))  # warm-up: page cache, decoder

    def stream_augment():
        for x, _ in stream.epoch(0, batches):
            augment(to_float(x), 4, True)

    def stream_only():
        for _ in stream.epoch(1, batches):
            pass  # epochs re-read the shards from the start: the same work every round

    data = ArrayDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                        torch.arange(n) % 10)

    def memory_augment():  # the real-data path: gather a batch from memory, augment
        for x, _ in train_batches(data, b, args.seed, 0, torch.device("cpu")):
            augment(to_float(x), 4, True)

    res = {"images": n, "batch": b, "tar_bytes_per_image": tar_bytes / n}
    res["stream_augment"] = _rate(batches * b, stream_augment)
    res["stream_decode"] = _rate(batches * b, stream_only)
    res["memory_augment"] = _rate(batches * b, memory_augment)
    res["parse_ours"] = _rate(n, lambda: [s for u in urls for s in _tar_samples(u)])
    res["parse_webdataset"] = _rate(
        n, lambda: list(wds.tarfile_to_samples()(iter([{"url": u} for u in urls]))))
    res["ratio_stream_over_memory"] = res["stream_augment"][0] / res["memory_augment"][0]
    res["ratio_parse_ours_over_webdataset"] = res["parse_ours"][0] / res["parse_webdataset"][0]
    print(f"read, 1 core, batch {b}, {n} images 32x32x3, {res['tar_bytes_per_image']:.0f} B/image "
          "in tars; images per CPU-second (per wall-second), median of 3:")
    for key, what in (("stream_augment", "shards: read + shuffle + PNG decode + augment"),
                      ("stream_decode", "shards: read + shuffle + PNG decode"),
                      ("memory_augment", "in-memory uint8: gather + augment (baseline)"),
                      ("parse_ours", "tar parsing only, our parser"),
                      ("parse_webdataset", "tar parsing only, webdataset (tarfile)")):
        cpu, wall = res[key]
        print(f"  {what:<48} {cpu:>9,.0f}  ({wall:,.0f})")
    print(f"  ratio shards / in-memory = {res['ratio_stream_over_memory']:.3f}; tar parsing ours / "
          f"webdataset = {res['ratio_parse_ours_over_webdataset']:.1f} "
          "(goal: shards >= 20,000 img/s per core)")
    return res


# ---------------------------------------------------------------------------------------------
# 2. shard_npz peak RSS


# Peak RSS of a fresh process: VmHWM (Linux), which starts at zero with the new program. (Linux
# keeps ru_maxrss across fork + exec, so a child of this large process would report at least the
# parent's size at fork; ru_maxrss is printed too and agrees when the parent is small.)
RSS_CHILD = """
import resource, sys
sys.path.insert(0, {repo!r})
{body}
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _child_rss_mb(body: str) -> float:
    code = RSS_CHILD.format(repo=str(REPO), body=body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    hwm_kb, _ = out.stdout.strip().splitlines()[-1].split()
    return int(hwm_kb) / 1024


def bench_rss(args, tmp: Path) -> dict:
    res: dict = {"imports_mb": _child_rss_mb("import data_pipeline.shard_npz")}
    for n in args.rss_sizes:
        images = natural_images(n, args.seed + n)
        for compressed in (False, True):
            name = f"rss{n}{'z' if compressed else ''}"
            (np.savez_compressed if compressed else np.savez)(tmp / f"{name}.npz", image=images,
                                                                  label=np.arange(n) % 100)
            size_mb = (tmp / f"{name}.npz").stat().st_size / 2**20
            start = time.perf_counter()
            rss = _child_rss_mb("from data_pipeline.shard_npz import shard_npz\n"
                                f"shard_npz({str(tmp / (name + '.npz'))!r}, {str(tmp / name)!r}, "
                                "10000, progress=False)")
            seconds = time.perf_counter() - start
            res[name] = {"images": n, "deflated": compressed, "file_mb": round(size_mb, 1),
                         "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1),
                         "img_s": round(n / seconds)}
            print(f"shard_npz {n:>7} images, {'deflated' if compressed else 'stored  '} "
                  f"{size_mb:7.1f} MB file: peak RSS {rss:6.1f} MB ({n / seconds:,.0f} img/s "
                  "incl. start-up)")
        del images
    big = f"rss{args.rss_sizes[1]}"
    res["np_load_mb"] = _child_rss_mb(f"import numpy as np\nnp.load({str(tmp / big)!r} + '.npz')"
                                      "['image'].sum()")
    lo, hi = res[f"rss{args.rss_sizes[0]}"], res[big]
    res["ratio_rss_large_over_small"] = hi["peak_rss_mb"] / lo["peak_rss_mb"]
    print(f"imports alone {res['imports_mb']:.1f} MB; np.load of the {hi['file_mb']} MB file "
          f"{res['np_load_mb']:.1f} MB; shard_npz peak RSS large / small file = "
          f"{res['ratio_rss_large_over_small']:.3f} for a {hi['images'] / lo['images']:.0f}x "
          "larger file (goal: flat, ~1.0)")
    return res


# ---------------------------------------------------------------------------------------------
# 3. generation


def bench_generate(args, tmp: Path) -> dict:
    from data_pipeline.diffusion import locate_model, make_scheduler, sample
    from data_pipeline.smoke import tiny_unet

    tiny_unet(tmp / "unet", channels=3, size=32)
    from diffusers import UNet2DModel

    sub, _, sched_cfg = locate_model(str(tmp / "unet"))
    unet = UNet2DModel.from_pretrained(str(tmp / "unet"), subfolder=sub,
                                       low_cpu_mem_usage=False).eval()
    idx = list(range(args.gen_images))
    res = {}
    for name, steps in (("ddim", 100), ("ddpm", 1000)):
        scheduler = make_scheduler(name, sched_cfg, steps)
        sample(unet, scheduler, idx[:2], args.seed, torch.device("cpu"))  # warm-up
        start = time.perf_counter()
        sample(unet, scheduler, idx, args.seed, torch.device("cpu"))
        res[f"{name}_{steps}_img_s"] = args.gen_images / (time.perf_counter() - start)
    res["ratio_ddim100_over_ddpm1000"] = res["ddim_100_img_s"] / res["ddpm_1000_img_s"]
    print(f"generation (tiny UNet 3x32x32, 1 core, batch {args.gen_images}): DDPM-1000 "
          f"{res['ddpm_1000_img_s']:.2f} img/s, DDIM-100 {res['ddim_100_img_s']:.2f} img/s; ratio "
          f"DDIM-100 / DDPM-1000 = {res['ratio_ddim100_over_ddpm1000']:.2f}")
    return res


def git_revision() -> str:
    """HEAD's commit read from .git (no git process)."""
    try:
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            path = REPO / ".git" / ref
            if path.is_file():
                return path.read_text().strip()[:12]
            for line in (REPO / ".git" / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0][:12]
        return head[:12]
    except OSError:
        return "unknown"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # per-core numbers
    parts = args.only or ["read", "rss", "generate"]
    results = {"git": git_revision(), "torch": torch.__version__, "seed": args.seed,
               "cpu": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="data_throughput-") as tmp:
        for part in parts:
            results[part] = {"read": bench_read, "rss": bench_rss,
                             "generate": bench_generate}[part](args, Path(tmp))
    results["load_avg_1m_end"] = os.getloadavg()[0]
    print(f"(load average {results['load_avg_1m']:.1f} -> {results['load_avg_1m_end']:.1f} on "
          f"{results['cpu']} cores; git {results['git']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
