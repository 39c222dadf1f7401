"""python -m data_pipeline.shard_npz: a released .npz (image uint8 N x H x W x C, label int N) -> shards.

The file is streamed (npz_stream.py): peak memory is one chunk of rows, whatever the file size. A
first pass over the labels (8 bytes an image at most) checks them and finds the number of classes
before anything is written. Rerunning is idempotent: a shard already in the manifest whose file
matches its checksum is skipped (its rows are seeked past), any other shard is (re)written. The
source is identified by the sha256 of its members, so a regenerated npz never fills the gaps of
shards cut from the old one.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from adr_scale.config import ConfigError
from data_pipeline.cli import Parser, positive_int, run_main
from data_pipeline.npz_stream import NpyStream
from data_pipeline.shards import (
    FORMAT,
    Manifest,
    make_row,
    open_output,
    remove_stale_temporaries,
    shard_name,
    verified,
    write_manifest,
    write_shard,
)

CHUNK_ROWS = 1024  # rows read at a time: 3 MB of 32x32x3 images, 12 MB of 64x64x3


def parse_args(argv: list[str] | None) -> object:
    p = Parser(prog="python -m data_pipeline.shard_npz",
               description="Shard a released .npz (keys 'image' uint8 N x H x W x C and 'label') "
                           "into WebDataset tars plus manifest.parquet, streaming the file.",
               example="python -m data_pipeline.shard_npz --npz cifar100_1m.npz "
                       "--out shards/c100-ddpm --shard-size 10000")
    p.add_argument("--npz", required=True, help="the .npz file (np.savez or np.savez_compressed)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--shard-size", type=positive_int, default=10000, help="images per shard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _open(path: str) -> tuple[zipfile.ZipFile, NpyStream, NpyStream]:
    if not os.path.isfile(path):
        raise ConfigError(f"--npz: {path!r} is not a file; allowed: an existing .npz file")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ConfigError(f"--npz: {path!r} is not an .npz (zip) archive; allowed: a file "
                          "written by np.savez or np.savez_compressed") from None
    images, labels = NpyStream(archive, path, "image"), NpyStream(archive, path, "label")
    shape = images.shape
    if images.dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4
                                                                and shape[3] not in (1, 3)):
        raise ConfigError(f"--npz: {path}: 'image' is {images.dtype} {shape}; allowed: uint8 "
                          "N x H x W x C with C 1 or 3 (or N x H x W)")
    if labels.dtype.kind not in "iu" or len(labels.shape) != 1 or len(labels) != len(images):
        raise ConfigError(f"--npz: {path}: 'label' is {labels.dtype} {labels.shape}; allowed: "
                          f"integers, shape ({len(images)},) to match 'image'")
    return archive, images, labels


def _scan(path: str) -> tuple[int, dict[str, str]]:
    """First pass, before anything is written: the labels are all >= 0 (returns max + 1) and the
    sha256 of each member's .npy bytes, hashed as they stream past (memory: one chunk). The
    digests identify the source by content: a regenerated npz at the same path and size is
    another source, a moved or renamed copy the same one."""
    archive, _, labels = _open(path)
    digests = {}
    with archive:
        low, high = 0, -1
        for part in labels.chunks(len(labels), CHUNK_ROWS * 64):
            if len(part):
                low, high = min(low, int(part.min())), max(high, int(part.max()))
        for key in ("image", "label"):
            sha = hashlib.sha256()
            with archive.open(f"{key}.npy") as member:
                while chunk := member.read(1 << 22):
                    sha.update(chunk)
            digests[key] = sha.hexdigest()
    if low < 0 or high < 0:
        raise ConfigError(f"--npz: {path}: 'label' holds {low}; allowed: class indices >= 0")
    return high + 1, digests


def _prepare(out: Path, spec: dict, meta: dict) -> Manifest:
    """The manifest to continue from; refuses a directory made from something else."""
    old = open_output(out)
    if old is None:
        return Manifest(meta, {})
    if old.meta.get("kind") != "shard_npz":
        raise ConfigError(f"--out: {out} already holds shards made by {old.meta.get('kind')}; "
                          "allowed: an empty directory or one shard_npz wrote (to resume)")
    theirs = old.meta.get("spec") or {}
    if theirs.get("npz_sha256") != spec["npz_sha256"]:
        raise ConfigError(f"--npz: {out} was sharded from an npz with other contents (image "
                          f"sha256 {str((theirs.get('npz_sha256') or {}).get('image'))[:12]}..., "
                          f"this one {spec['npz_sha256']['image'][:12]}...); allowed: the same "
                          "data (to resume) or a new --out")
    if theirs.get("shard_size") != spec["shard_size"]:
        raise ConfigError(f"--shard-size: {out} holds shards of {theirs.get('shard_size')} "
                          f"images, not {spec['shard_size']}; allowed: the same --shard-size (to "
                          "resume) or a new --out")
    return Manifest(meta, old.rows)


def shard_npz(npz: str, out: str | Path, shard_size: int, progress: bool = True) -> Manifest:
    """Shard `npz` into `out`; returns the manifest. Every input error is raised before writing."""
    out = Path(out)
    num_classes, digests = _scan(npz)
    archive, images, labels = _open(npz)
    n = len(images)
    c = images.shape[3] if len(images.shape) == 4 else 1
    spec = {"npz_sha256": digests, "shard_size": shard_size}
    num_shards = math.ceil(n / shard_size)
    meta = {"format": FORMAT, "kind": "shard_npz", "num_shards": num_shards, "num_images": n,
            "num_classes": num_classes, "image_shape": [c, *images.shape[1:3]], "spec": spec,
            "npz": os.path.abspath(npz)}  # where it was read from (not compared on resume)
    manifest = _prepare(out, spec, meta)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    write_manifest(out, manifest)
    bar = tqdm(total=n, unit="img", desc=f"shard {out.name}", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    with archive:
        for k in range(num_shards):
            name, start = shard_name(k), k * shard_size
            count = min(shard_size, n - start)
            if verified(out, manifest.rows.get(name)) and manifest.rows[name]["count"] == count:
                images.skip(count)
                labels.skip(count)
                bar.update(count)
                continue
            written = write_shard(out, k, _samples(images, labels, start, count, bar), num_classes)
            manifest.rows[name] = make_row(name, written, generated=count, first_index=start,
                                           last_index=start + count - 1, source=meta["npz"])
            write_manifest(out, manifest)
    bar.close()
    return manifest


def _samples(images: NpyStream, labels: NpyStream, start: int, count: int, bar: tqdm):
    index = start
    label_chunks = labels.chunks(count, CHUNK_ROWS)
    for part in images.chunks(count, CHUNK_ROWS):
        ys = next(label_chunks).astype(np.int64)
        if part.ndim == 3:
            part = part[..., None]  # (B, H, W) -> (B, H, W, 1)
        for img, y in zip(part, ys, strict=True):
            yield {"index": index, "image": img, "cls": int(y)}
            index += 1
        bar.update(len(part))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    manifest = shard_npz(args.npz, args.out, args.shard_size, progress=not args.no_progress)
    images = sum(r["count"] for r in manifest.rows.values())
    print(f"{args.out}: {len(manifest.rows)} shards, {images} images, "
          f"{manifest.meta['num_classes']} classes ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("shard_npz", main))
