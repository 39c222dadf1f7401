"""Cost of the synthetic cache's integrity check (adr_scale.data.synthetic_cache._cache_check:
blake2b of labels.i64 and of 64 blocks of 64 KiB of images.u8) against a blake2b of the whole
images.u8, on a 1 GiB images file (349,525 CIFAR-sized images), one run each, with the file's
pages in memory (warm) and dropped from the page cache with posix_fadvise (cold, as on a node's
first open).

    python benchmarks/cache_check.py [--gib 1] [--dir /tmp] [--json benchmarks/results/cache_check.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from adr_scale.data.synthetic_cache import _cache_check


def full_digest(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def drop_pages(path: Path) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--json")
    args = parser.parse_args()
    size = int(args.gib * 2**30)
    n = size // 3072
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        cache = Path(tmp)
        rng = np.random.default_rng(0)
        with open(cache / "images.u8", "wb") as f:
            for start in range(0, size, 1 << 26):
                f.write(rng.integers(0, 256, min(1 << 26, size - start), dtype=np.uint8).tobytes())
        (rng.integers(0, 10, n, dtype=np.int64)).tofile(cache / "labels.i64")
        images = cache / "images.u8"
        result = {"images_bytes": size, "num_images": n}
        for state in ("warm", "cold"):
            for name, fn in (("sampled", _cache_check), ("full", full_digest)):
                if state == "cold":
                    drop_pages(images)
                    drop_pages(cache / "labels.i64")
                else:
                    full_digest(images)  # every page in memory
                result[f"{name}_{state}_s"] = timed(fn, cache if name == "sampled" else images)
            result[f"ratio_{state}"] = result[f"full_{state}_s"] / result[f"sampled_{state}_s"]
    result["git_revision"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                            text=True).stdout.strip()
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
