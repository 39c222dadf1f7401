"""The imagefolder cache against torchvision's ImageFolder + DataLoader, in one run.

    python benchmarks/dataset_cache.py [--n 50000] [--workers N] [--out benchmarks/results/dataset_cache.json]

Writes an ImageFolder of N 32x32 RGB PNGs (scikit-learn's digits upscaled 4x, nearest, with a
per-image colour and 3 % pixel noise, so files compress like small natural images rather than
noise) plus a 1,000-image test split in a temp dir, then times, on the same folder:

1. our cache build (listing + stat, parallel decode, statistics, atomic rename): images/s, and per
   decoding process;
2. a second load (cache hit): the start-up cost of every later run;
3. one epoch of torchvision's ImageFolder + DataLoader (batch 128, shuffle, PILToTensor, the same
   number of worker processes as our build), the per-epoch cost the cache removes.

Saves the numbers with the git revision and versions (STYLE.md 13).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEST_IMAGES = 1000


def write_folder(root: Path, n: int, seed: int = 0) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    digits = np.round(bunch.data * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", TEST_IMAGES)):
        for c in range(10):
            (root / split / f"class_{c}").mkdir(parents=True, exist_ok=True)
        pick = rng.integers(0, len(digits), count)
        colours = rng.integers(64, 256, (count, 3))
        for i, k in enumerate(pick):
            big = digits[k].repeat(4, 0).repeat(4, 1).astype(np.float32) / 255  # 32x32
            rgb = big[..., None] * colours[i]
            noise = rng.random((32, 32, 1)) < 0.03
            rgb = np.where(noise, rng.integers(0, 256, (32, 32, 3)), rgb).astype(np.uint8)
            Image.fromarray(rgb).save(root / split / f"class_{bunch.target[k]}" / f"{i:06d}.png")


def time_ours(root: Path, cache_dir: Path, workers: int | None) -> dict:
    from adr_scale.config import DataConfig
    from adr_scale.data.generic import ImageFolderCache, _listing, load_generic

    cfg = DataConfig(dataset="imagefolder", root=str(root), cache_dir=str(cache_dir))
    t0 = time.perf_counter()
    names, train, test = _listing(root)  # what load_generic does first, then the build
    index = {c: i for i, c in enumerate(names)}
    splits = {s: ([p for c in sorted(d) for p in d[c]],
                  np.asarray([index[c] for c in sorted(d) for _ in d[c]], np.int64))
              for s, d in (("train", train), ("test", test))}
    cache = ImageFolderCache(root, splits, size=32, channels=3, strict=True, skip_bad=False,
                             cache_dir=str(cache_dir), workers=workers)
    arrays, meta = cache.open()
    build_s = time.perf_counter() - t0
    assert cache.built
    t0 = time.perf_counter()
    hit = load_generic(cfg)  # a later run: list, stat, key, read the arrays
    hit_s = time.perf_counter() - t0
    assert np.array_equal(hit.train.images.numpy(), arrays["train_x"])
    total = sum(meta["num_images"].values())
    return {"images": total, "processes": cache.processes, "build_s": round(build_s, 2),
            "build_images_per_s": round(total / build_s),
            "build_images_per_s_per_process": round(total / build_s / cache.processes),
            "cache_hit_s": round(hit_s, 3), "cache_bytes": sum(
                f.stat().st_size for f in cache.path.iterdir())}


def time_torchvision(root: Path, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    t0 = time.perf_counter()
    data = datasets.ImageFolder(str(root / "train"), transform=transforms.PILToTensor())
    loader = DataLoader(data, batch_size=128, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    n = 0
    for images, _ in loader:
        n += len(images)
    epoch_s = time.perf_counter() - t0
    return {"images": n, "workers": workers, "epoch_s": round(epoch_s, 2),
            "images_per_s": round(n / epoch_s)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="training images (default 50000)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: our rule, one per core)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/dataset_cache.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        t0 = time.perf_counter()
        write_folder(root, args.n)
        write_s = time.perf_counter() - t0
        ours = time_ours(root, Path(tmp) / "cache", args.workers)
        theirs = time_torchvision(root, ours["processes"])
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    import PIL
    import torch
    import torchvision

    result = {
        "command": "python benchmarks/dataset_cache.py " + " ".join(argv or sys.argv[1:]),
        "git_revision": rev + ("+dirty" if dirty else ""), "train_images": args.n,
        "test_images": TEST_IMAGES, "cores": len(os.sched_getaffinity(0)),
        "write_pngs_s": round(write_s, 1), "ours": ours, "torchvision": theirs,
        # one torchvision epoch decodes the training split once, as our build does (plus test)
        "torchvision_epoch_over_our_build": round(theirs["epoch_s"] / ours["build_s"], 2),
        "torchvision_epoch_over_our_cache_hit": round(theirs["epoch_s"] / ours["cache_hit_s"], 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "pillow": PIL.__version__,
                     "numpy": np.__version__},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
