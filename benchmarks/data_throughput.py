"""Cost of the synthetic-data path, each number next to its baseline measured in the same run.

1. build: the decoded cache (adr_scale.data.synthetic.SyntheticSet) from 32x32x3 shards, images per
   CPU-second for webdataset's tar reader and ours (one process), the extrapolated time for 1M
   images on 8 cores (goal: under 60 s), and a build on all cores with spawned workers.
2. gather: host time per step to draw and gather 768 images from the mapped cache (goal: under
   1 ms), against gathering the same indices from an in-memory tensor.
3. memory: 4 processes each reading every image of a 100k-image cache; their summed unique memory
   (USS) grows by less than 10 % of the cache (the pages are shared), against each holding a copy.
4. coverage: distinct images after one CIFAR-equivalent epoch on 8 ranks (96 per rank per step),
   cache draws vs the per-epoch shard stream that the cache replaced (loaded from git history),
   next to the expectation 1 - exp(-draws/N).
5. shard_npz peak RSS (VmHWM of a fresh process) at two file sizes, stored and deflated, next
   to np.load of the larger file and to the imports alone. Goal: flat in the file size.
6. generation: images/s of the tiny random UNet (3x32x32, 42k parameters; or --gen-model) on one
   CPU core (or --gen-device cuda), the old sampler (per-sample CPU generators, noise copied to the
   device, fp32) against the new one (generators on the device) in fp32, channels_last and bf16,
   interleaved in one run; the per-step noise cost; DDPM-1000 versus DDIM-100.

Examples:
  python benchmarks/data_throughput.py                      # all, about 10 minutes on 2 CPU cores
  python benchmarks/data_throughput.py --only build --only gather --build-images 50000
  python benchmarks/data_throughput.py --only memory --only coverage --json /tmp/cache.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
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

from adr_scale.data.synthetic import SyntheticSet  # noqa: E402
from adr_scale.run.provenance import short_revision as git_revision  # noqa: E402
from data_pipeline.shard_npz import shard_npz  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=list(PARTS), action="append",
                   help="run only these parts (repeatable)")
    p.add_argument("--build-images", type=int, default=20000, help="images in the build and gather parts")
    p.add_argument("--gather-batch", type=int, default=768, help="images gathered per step (768 of 1024)")
    p.add_argument("--gather-steps", type=int, default=500, help="steps timed in the gather part")
    p.add_argument("--memory-images", type=int, default=100000, help="images in the memory and coverage parts")
    p.add_argument("--memory-procs", type=int, default=4, help="processes mapping the cache")
    p.add_argument("--rss-sizes", type=int, nargs=2, default=[10000, 100000],
                   help="images in the two .npz files of the RSS benchmark (32x32x3)")
    p.add_argument("--gen-images", type=int, default=8, help="generation: images per batch")
    p.add_argument("--gen-steps", type=int, default=100,
                   help="generation: sampling steps of the old-vs-new comparison (DDIM and DDPM)")
    p.add_argument("--gen-rounds", type=int, default=3, help="generation: timed rounds (median)")
    p.add_argument("--gen-device", choices=["cpu", "cuda"], default="cpu",
                   help="generation: where to sample (cuda: run where a GPU is lent)")
    p.add_argument("--gen-model", default=None,
                   help="generation: a diffusers pipeline directory (default: the tiny random UNet "
                        "3x32x32; e.g. a local copy of google/ddpm-cifar10-32 on a GPU)")
    p.add_argument("--gen-ddpm1000", action=argparse.BooleanOptionalAction, default=True,
                   help="generation: also time DDPM with 1000 steps (new path) for the DDIM ratio")
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
# 1. the decoded cache: build, per-step gather, shared memory, coverage


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


def _shards(tmp: Path, n: int, seed: int) -> Path:
    """n CIFAR-like 32x32x3 images (100 classes) in shards of 10,000 (made once per size)."""
    out = tmp / f"shards{n}"
    if not (out / "manifest.parquet").is_file():
        np.savez(tmp / f"set{n}.npz", image=natural_images(n, seed), label=np.arange(n) % 100)
        shard_npz(str(tmp / f"set{n}.npz"), out, 10000, progress=False)
        (tmp / f"set{n}.npz").unlink()
    return out


def bench_build(args, tmp: Path) -> dict:
    n = args.build_images
    shards = _shards(tmp, n, args.seed)
    res: dict = {"images": n}
    for reader in ("webdataset", "fast"):
        cache = tmp / f"build-{reader}"

        def build(cache=cache, reader=reader):
            shutil.rmtree(cache, ignore_errors=True)
            SyntheticSet(shards, cache, tar_reader=reader, workers=1, progress=False)

        cpu, wall = _rate(n, build)
        res[reader] = {"img_per_cpu_s": round(cpu), "img_per_wall_s": round(wall),
                       "extrapolated_1m_on_8_cores_s": round(1e6 / (8 * cpu), 1)}
    shutil.rmtree(tmp / "build-par", ignore_errors=True)
    start = time.perf_counter()  # spawned worker processes (start-up included)
    SyntheticSet(shards, tmp / "build-par", tar_reader="fast", progress=False)
    res["fast_all_cores_wall_s"] = round(time.perf_counter() - start, 2)
    res["ratio_fast_over_webdataset"] = res["fast"]["img_per_cpu_s"] / res["webdataset"]["img_per_cpu_s"]
    print(f"cache build, {n} images 32x32x3 in {n // 10000} shards (read + sha256 + parse + PNG "
          "decode + write), images per CPU-second, median of 3:")
    for reader in ("webdataset", "fast"):
        r = res[reader]
        print(f"  {reader:<11} {r['img_per_cpu_s']:>8,} per core ({r['img_per_wall_s']:,} per wall-s)"
              f"  -> 1M images on 8 cores ~{r['extrapolated_1m_on_8_cores_s']} s (goal < 60 s)")
    print(f"  fast parser / webdataset = {res['ratio_fast_over_webdataset']:.2f}; all "
          f"{os.cpu_count()} cores, spawned workers: {res['fast_all_cores_wall_s']} s wall")
    return res


def bench_gather(args, tmp: Path) -> dict:
    n, b = args.build_images, args.gather_batch
    synth = SyntheticSet(_shards(tmp, n, args.seed), tmp / "build-fast", progress=False)
    array = synth.array().copy()  # the same images in anonymous memory
    images = torch.from_numpy(array)
    out = np.empty((b, *synth.image_shape), np.uint8)
    labels = np.empty(b, np.int64)
    steps = range(args.gather_steps)

    def per_step_us(fn) -> float:
        times = []
        for k in steps:
            start = time.perf_counter()
            fn(k)
            times.append(time.perf_counter() - start)
        return 1e6 * statistics.median(times)

    for k in range(20):  # warm-up: the page cache holds the file after the build
        synth.gather(synth.indices(k, b, seed=0, rank=0), out, labels)
    res = {"images": n, "batch": b,
           "draw_us": per_step_us(lambda k: synth.indices(k, b, seed=0, rank=0)),
           "mapped_us": per_step_us(lambda k: synth.gather(
               synth.indices(k, b, seed=0, rank=0), out, labels)),
           "in_memory_us": per_step_us(lambda k: images[torch.from_numpy(
               synth.indices(k, b, seed=0, rank=0))]),
           "in_memory_numpy_us": per_step_us(lambda k: np.take(
               array, synth.indices(k, b, seed=0, rank=0), axis=0, out=out, mode="clip"))}
    res["ratio_mapped_over_in_memory"] = res["mapped_us"] / res["in_memory_us"]
    res["ratio_mapped_over_in_memory_numpy"] = res["mapped_us"] / res["in_memory_numpy_us"]
    print(f"per-step host work for {b} images of {n} (median over {len(steps)} steps): draw "
          f"{res['draw_us']:.0f} us; draw + gather from the mapped cache {res['mapped_us']:.0f} us "
          f"(goal < 1000) vs from an in-memory tensor {res['in_memory_us']:.0f} us (torch indexing,"
          f" ratio {res['ratio_mapped_over_in_memory']:.2f}) and {res['in_memory_numpy_us']:.0f} us"
          f" (the same np.take on an in-memory array, ratio "
          f"{res['ratio_mapped_over_in_memory_numpy']:.2f})")
    return res


USS_CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
import numpy as np
from adr_scale.data.synthetic import SyntheticSet

def uss_kb():
    fields = dict(l.split(":", 1) for l in open("/proc/self/smaps_rollup") if ":" in l)
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))

synth = SyntheticSet({shards!r}, {cache!r}, progress=False)
before = uss_kb()
data = synth.array() if {mode!r} == "map" else synth.array().copy()  # "copy": the peers' way
total = sum(int(data[i:i + 4096].sum(dtype=np.int64)) for i in range(0, len(data), 4096))
open({ready!r}, "w").write("1")
while len(list(__import__("pathlib").Path({ready!r}).parent.glob("ready*"))) < {procs}:
    time.sleep(0.05)  # measure while every process holds its mapping
after = uss_kb()
print(before, after, total)
"""


def _uss_growth_mb(tmp: Path, shards: Path, cache: Path, procs: int, mode: str) -> list[float]:
    sync = tmp / f"uss-{mode}"
    shutil.rmtree(sync, ignore_errors=True)
    sync.mkdir()
    children = [subprocess.Popen(
        [sys.executable, "-c", USS_CHILD.format(repo=str(REPO), shards=str(shards), cache=str(cache),
                                                mode=mode, ready=str(sync / f"ready{i}"), procs=procs)],
        stdout=subprocess.PIPE, text=True) for i in range(procs)]
    growth = []
    for child in children:
        before, after, _ = child.communicate(timeout=600)[0].split()
        growth.append((int(after) - int(before)) / 1024)
    return growth


def bench_memory(args, tmp: Path) -> dict:
    n, procs = args.memory_images, args.memory_procs
    shards = _shards(tmp, n, args.seed)
    synth = SyntheticSet(shards, tmp / "mem-cache", progress=False)  # built once, here
    size_mb = synth.array().nbytes / 2**20
    res: dict = {"images": n, "cache_mb": round(size_mb, 1), "processes": procs}
    res["map_uss_growth_mb"] = _uss_growth_mb(tmp, shards, tmp / "mem-cache", procs, "map")
    res["copy_uss_growth_mb"] = _uss_growth_mb(tmp, shards, tmp / "mem-cache", procs, "copy")
    res["map_share_of_cache"] = sum(res["map_uss_growth_mb"]) / size_mb
    res["copy_share_of_cache"] = sum(res["copy_uss_growth_mb"]) / size_mb
    print(f"memory, {procs} processes each reading every image of a {n}-image cache "
          f"({size_mb:.0f} MB): summed unique-memory (USS) growth {sum(res['map_uss_growth_mb']):.1f}"
          f" MB mapped = {100 * res['map_share_of_cache']:.1f} % of the cache (goal < 10 %); "
          f"{sum(res['copy_uss_growth_mb']):.0f} MB = {100 * res['copy_share_of_cache']:.0f} % when "
          "each process holds its own copy (the peers' np.load)")
    return res


def module_from_git(rev: str, path: str, name: str):
    """Module `path` as it was at commit `rev`, imported as `name` (an old version measured beside
    the new one in the same run). Raises CalledProcessError outside a checkout holding `rev`."""
    import importlib.util

    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"],
                            capture_output=True, text=True, check=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def _old_stream_module():
    """adr_scale.data.synthetic as it was before the cache (the per-epoch shard stream)."""
    return module_from_git(OLD_STREAM_REV, "adr_scale/data/synthetic.py", "old_synthetic")


OLD_STREAM_REV = "af01065"  # the last commit that streamed shards per epoch


def bench_coverage(args, tmp: Path) -> dict:
    n, ranks, per_rank = args.memory_images, 8, 96  # 768 of a 1024 batch on 8 ranks
    steps = -(-50_000 // 1024)  # one CIFAR-equivalent epoch: 49 steps
    shards = _shards(tmp, n, args.seed)
    synth = SyntheticSet(shards, tmp / "mem-cache", progress=False)
    seen = np.zeros(n, bool)
    for k, r in itertools.product(range(steps), range(ranks)):
        seen[synth.indices(k, per_rank, seed=0, rank=r)] = True
    draws = steps * ranks * per_rank
    res = {"images": n, "ranks": ranks, "steps": steps, "draws": draws,
           "cache_distinct_share": float(seen.mean()), "expected_share": 1 - math.exp(-draws / n)}
    try:
        old = _old_stream_module()
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"coverage: the old stream ({OLD_STREAM_REV}) is not in this checkout ({exc})")
        old = None
    if old is not None:  # the stream yields pixels, not indices: find each image by its bytes
        array = synth.array()
        index_of = {hash(array[i].tobytes()): i for i in range(n)}
        seen_old = np.zeros(n, bool)
        for r in range(ranks):
            stream = old.SyntheticStream(shards, per_rank, seed=0, rank=r, tar_reader="fast")
            for images, _ in stream.epoch(0, steps):
                seen_old[[index_of[hash(x.numpy().tobytes())] for x in images]] = True
        res["stream_distinct_share"] = float(seen_old.mean())
    print(f"coverage after one CIFAR-equivalent epoch ({steps} steps x {ranks} ranks x {per_rank} = "
          f"{draws:,} draws from {n:,} images): cache {100 * res['cache_distinct_share']:.1f} % "
          f"distinct (expected 1 - exp(-draws/N) = {100 * res['expected_share']:.1f} %)"
          + (f"; the old per-epoch stream {100 * res['stream_distinct_share']:.1f} %"
             if "stream_distinct_share" in res else ""))
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


GEN_OLD_REV = "29db01c"  # the last commit whose sampler drew noise with CPU generators


def _old_sampler():
    """data_pipeline.diffusion.sample as it was at GEN_OLD_REV: per-sample CPU generators, the
    noise copied to the device (initial and every DDPM step), eager fp32, NCHW."""
    return module_from_git(GEN_OLD_REV, "data_pipeline/diffusion.py", "old_diffusion").sample


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_generate(args, tmp: Path) -> dict:
    """Images/s of the old sampler against the new one, interleaved round by round in one run:
    old (CPU generators, noise copied over, fp32 NCHW) vs new (generators on the sampling device)
    in fp32, fp32 + channels_last and bf16 autocast; DDIM and DDPM (per-step noise) at
    --gen-steps. Then the per-step noise cost alone for 256 images, old vs new, and (new path)
    DDPM-1000 vs DDIM-100. Median of --gen-rounds; CPU-seconds on the CPU (the per-core figure,
    less disturbed by other jobs), wall seconds with synchronisation on CUDA."""
    from diffusers import UNet2DModel

    from data_pipeline.diffusion import (
        initial_noise,
        locate_model,
        make_scheduler,
        noise_generators,
        sample,
    )
    from data_pipeline.smoke import tiny_unet

    device = torch.device(args.gen_device)
    model = args.gen_model or str(tiny_unet(tmp / "unet", channels=3, size=32))
    sub, unet_cfg, sched_cfg = locate_model(model)
    unet = UNet2DModel.from_pretrained(model, subfolder=sub, low_cpu_mem_usage=False).to(device).eval()
    unet_cl = UNet2DModel.from_pretrained(model, subfolder=sub, low_cpu_mem_usage=False)
    unet_cl = unet_cl.to(device).eval().to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as shard_task does on CUDA
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    old_sample = _old_sampler()
    idx = list(range(args.gen_images))
    variants = {  # name -> (sampler, unet, keyword arguments)
        "old_fp32": (old_sample, unet, {}),
        "new_fp32": (sample, unet, {}),
        "new_fp32_channels_last": (sample, unet_cl, {"channels_last": True}),
        "new_bf16": (sample, unet, {"precision": "bf16"}),
    }

    def timed(fn, *a, **kw) -> float:
        _sync(device)
        start = clock()
        fn(*a, **kw)
        _sync(device)
        return clock() - start

    res: dict = {"device": device.type, "model": args.gen_model or "tiny random UNet 3x32x32",
                 "params": sum(p.numel() for p in unet.parameters()), "batch": args.gen_images,
                 "steps": args.gen_steps, "rounds": args.gen_rounds,
                 "clock": "cpu-seconds" if device.type == "cpu" else "wall-seconds",
                 "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    for name in ("ddim", "ddpm"):
        scheduler = make_scheduler(name, sched_cfg, args.gen_steps)
        for fn, net, kw in variants.values():  # warm-up (cuDNN benchmark, allocator, autocast)
            fn(net, make_scheduler(name, sched_cfg, 2), idx, args.seed, device, **kw)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.gen_rounds):  # interleaved: load drift hits every variant alike
            for v, (fn, net, kw) in variants.items():
                times[v].append(timed(fn, net, scheduler, idx, args.seed, device, **kw))
        for v in variants:
            res[f"{name}_{args.gen_steps}_{v}_img_s"] = args.gen_images / statistics.median(times[v])
        for v in variants:
            res[f"{name}_{args.gen_steps}_{v}_over_old"] = (
                res[f"{name}_{args.gen_steps}_{v}_img_s"] / res[f"{name}_{args.gen_steps}_old_fp32_img_s"])

    shape = (unet_cfg["in_channels"], *((unet_cfg["sample_size"],) * 2 if isinstance(
        unet_cfg["sample_size"], int) else unet_cfg["sample_size"]))
    noise = {"old": [], "new": []}
    big = list(range(256))
    for _ in range(max(args.gen_rounds, 5)):  # one step's draws for 256 images, then on device
        noise["old"].append(timed(lambda: initial_noise(noise_generators(big, 0, CPU_DEVICE), shape, device)))
        noise["new"].append(timed(lambda: initial_noise(noise_generators(big, 0, device), shape, device)))
    res["noise_256_ms_old"] = 1000 * statistics.median(noise["old"])
    res["noise_256_ms_new"] = 1000 * statistics.median(noise["new"])

    if args.gen_ddpm1000:
        t_ddpm = timed(sample, unet, make_scheduler("ddpm", sched_cfg, 1000), idx, args.seed, device)
        t_ddim = timed(sample, unet, make_scheduler("ddim", sched_cfg, 100), idx, args.seed, device)
        res["ddpm_1000_img_s"] = args.gen_images / t_ddpm
        res["ddim_100_img_s"] = args.gen_images / t_ddim
        res["ratio_ddim100_over_ddpm1000"] = t_ddpm / t_ddim

    k = args.gen_steps
    print(f"generation ({res['model']}, {res['params']:,} parameters, {device.type}"
          + (f" {res['gpu']}" if res["gpu"] else ", 1 core") + f", batch {args.gen_images}, "
          f"median of {args.gen_rounds} interleaved rounds, images per {res['clock'][:-1]}):")
    for name in ("ddim", "ddpm"):
        print(f"  {name.upper()}-{k}: " + ", ".join(
            f"{v} {res[f'{name}_{k}_{v}_img_s']:.2f} img/s ({res[f'{name}_{k}_{v}_over_old']:.2f}x)"
            for v in variants))
    print(f"  per-step noise for 256 images: old {res['noise_256_ms_old']:.2f} ms (CPU generators"
          f"{', copied to the GPU' if device.type == 'cuda' else ''}), new {res['noise_256_ms_new']:.2f} ms")
    if args.gen_ddpm1000:
        print(f"  new path: DDPM-1000 {res['ddpm_1000_img_s']:.2f} img/s, DDIM-100 "
              f"{res['ddim_100_img_s']:.2f} img/s; ratio DDIM-100 / DDPM-1000 = "
              f"{res['ratio_ddim100_over_ddpm1000']:.2f}")
    return res


CPU_DEVICE = torch.device("cpu")


PARTS = {"build": bench_build, "gather": bench_gather, "memory": bench_memory,
         "coverage": bench_coverage, "rss": bench_rss, "generate": bench_generate}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # per-core numbers
    parts = args.only or list(PARTS)
    results = {"git": git_revision(), "torch": torch.__version__, "seed": args.seed,
               "cpu": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="data_throughput-") as tmp:
        for part in parts:
            results[part] = PARTS[part](args, Path(tmp))
    results["load_avg_1m_end"] = os.getloadavg()[0]
    print(f"(load average {results['load_avg_1m']:.1f} -> {results['load_avg_1m_end']:.1f} on "
          f"{results['cpu']} cores; git {results['git']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
