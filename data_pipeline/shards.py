"""The on-disk format: WebDataset shard tars and the manifest, written atomically.

    DIR/shard-000000.tar ...   WebDataset tars (webdataset's TarWriter, fixed mtime so a shard's bytes
                               depend only on its samples). One sample = three members, key = 12-digit
                               index (no dots, as WebDataset requires):
                                 KEY.png   lossless PNG, uint8, H x W (grey) or H x W x 3 (RGB)
                                 KEY.cls   class index, ASCII decimal
                                 KEY.json  generated shards only: {"index", "seed", "confidence"}
    DIR/manifest.parquet       one row per finished shard (ROW_SCHEMA); the schema metadata
                               (key b"adr_scale") holds the directory's description: format, kind,
                               num_shards, num_images, num_classes, image_shape [C, H, W], spec.

A shard is written to a hidden temporary name (".shard-000000.tar.PID.tmp") and renamed when
complete and flushed, so a visible shard is always whole; the manifest is rewritten the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from adr_scale.config import ConfigError
from adr_scale.shard_format import MANIFEST, META_KEY, PNG_FILTER_UP, PNG_SIGNATURE  # noqa: F401

FORMAT = 1
TAR_MTIME = 0  # fixed member mtime: regenerated shards are byte-identical

ROW_SCHEMA = pa.schema([
    ("shard", pa.string()),  # file name, e.g. shard-000000.tar
    ("count", pa.int64()),  # samples in the shard
    ("sha256", pa.string()),  # of the whole tar file
    ("bytes", pa.int64()),  # file size
    ("class_hist", pa.list_(pa.int64())),  # samples per class, length num_classes
    ("generated", pa.int64()),  # images produced to fill the shard (> count with --balance)
    ("first_index", pa.int64()),  # the shard's index range: candidate indices (generation)
    ("last_index", pa.int64()),  # or rows of the source .npz, inclusive
    ("source", pa.string()),  # diffusion model (path or hub id) or the source .npz
    ("scheduler", pa.string()),  # ddpm | ddim | null (sharded .npz)
    ("steps", pa.int64()),  # sampling steps | null
    ("seed", pa.int64()),  # noise seed | null
    ("labeler", pa.string()),  # labelling checkpoint | null
])


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def sample_key(index: int) -> str:
    return f"{index:012d}"


# zlib level of the PNG data. 0 ("stored") makes the reader's inflate a copy: reading + decoding
# runs at ~36k images/s per core instead of ~16k with level 6, for ~11 % more bytes per sample in
# the tars (32x32x3; docs/data.md). The tar format already spends ~1.5 kB of headers per sample.
PNG_ZLIB_LEVEL = 0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, C) with C in {1, 3} -> a standard 8-bit PNG (lossless).

    Every row uses filter type 2 ("Up"), so a reader can undo the filter for a whole batch with
    one cumulative sum over rows (adr_scale.shard_format.unfilter does); any PNG decoder reads it.
    Written here rather than by Pillow, whose encoder picks filters per row and always deflates.
    """
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (1, 3), image.shape
    h, w, c = image.shape
    rows = image.reshape(h, w * c)
    up = np.diff(rows, axis=0, prepend=np.zeros((1, w * c), np.uint8))  # uint8: wraps mod 256
    filtered = np.concatenate([np.full((h, 1), PNG_FILTER_UP, np.uint8), up], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)  # 8 bit grey / RGB
    data = zlib.compress(filtered.tobytes(), PNG_ZLIB_LEVEL)
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, C)."""
    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr[:, :, None] if arr.ndim == 2 else arr


class _HashingFile:
    """A write-only file that hashes and counts what passes through (no second read)."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


@dataclass(frozen=True)
class WrittenShard:
    count: int
    sha256: str
    bytes: int
    class_hist: list[int]


def write_shard(directory: Path, k: int, samples: Iterable[dict[str, Any]],
                num_classes: int) -> WrittenShard:
    """Write `samples` ({"index", "image" (H, W, C) uint8, "cls", optional "json"}) as shard k.

    The tar appears under its final name only once it is complete and flushed to disk.
    """
    final = directory / shard_name(k)
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    hist = [0] * num_classes
    count = 0
    try:
        with open(tmp, "wb") as f:
            hashed = _HashingFile(f)
            with wds.TarWriter(hashed, mtime=TAR_MTIME, compress=False) as writer:
                for s in samples:
                    record = {"__key__": sample_key(s["index"]), "png": encode_png(s["image"]),
                              "cls": int(s["cls"])}
                    if "json" in s:
                        record["json"] = s["json"]
                    writer.write(record)
                    hist[int(s["cls"])] += 1
                    count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return WrittenShard(count, hashed.sha.hexdigest(), hashed.size, hist)


def remove_stale_temporaries(directory: Path) -> int:
    """Delete temporary shards an interrupted run left behind; returns how many."""
    stale = list(directory.glob(".shard-*.tar.*.tmp")) + list(directory.glob(f".{MANIFEST}.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()


@dataclass(frozen=True)
class ScannedShard:
    sha256: str
    bytes: int
    count: int
    class_hist: list[int]
    indices: list[int]  # sample keys, in file order
    metas: list[dict | None]  # the json member of each sample, if any


def scan_shard(path: Path, num_classes: int) -> ScannedShard:
    """Read a shard once: checksum, samples, class histogram. Raises ValueError if malformed."""
    data = path.read_bytes()  # one shard (tens of MB at most), read once for hash and parse
    hist = [0] * num_classes
    indices: list[int] = []
    metas: list[dict | None] = []
    members: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if key not in members:
                    members[key] = {}
                    order.append(key)
                if ext in ("cls", "json"):
                    members[key][ext] = tar.extractfile(info).read()
                else:
                    members[key][ext] = b""
    except tarfile.TarError as exc:
        raise ValueError(f"unreadable tar ({exc})") from None
    for key in order:
        m = members[key]
        if "png" not in m or "cls" not in m:
            raise ValueError(f"sample {key} lacks a png or cls member")
        label = int(m["cls"])
        if not 0 <= label < num_classes:
            raise ValueError(f"sample {key} has class {label}, outside [0, {num_classes})")
        hist[label] += 1
        indices.append(int(key))
        metas.append(json.loads(m["json"]) if "json" in m else None)
    return ScannedShard(hashlib.sha256(data).hexdigest(), len(data), len(order), hist,
                        indices, metas)


# ---------------------------------------------------------------------------------------------
# Manifest


@dataclass
class Manifest:
    meta: dict[str, Any]  # format, kind, num_shards, num_images, num_classes, image_shape, spec
    rows: dict[str, dict[str, Any]]  # shard name -> row (ROW_SCHEMA fields)


def open_output(directory: Path, flag: str = "--out") -> Manifest | None:
    """The manifest of an output directory (None if new); refuses files and foreign directories."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{flag}: {str(directory)!r} is a file; allowed: a directory")
    manifest = read_manifest(directory) if directory.is_dir() else None
    if manifest is None and directory.is_dir() and any(directory.glob("shard-*.tar")):
        raise ConfigError(f"{flag}: {directory} holds shard files but no {MANIFEST}; allowed: "
                          "a new or empty directory, or one this pipeline wrote (to resume)")
    return manifest


def read_manifest(directory: Path) -> Manifest | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[META_KEY])
        rows = {r["shard"]: r for r in table.to_pylist()}
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds on a corrupt file
        raise ConfigError(f"{path}: not a readable manifest ({type(exc).__name__}); allowed: the "
                          "manifest.parquet data_pipeline wrote (restore it, or rerun into a new "
                          "directory)") from None
    return Manifest(meta, rows)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Rewrite the manifest atomically, rows in shard order (untouched if it would not change)."""
    if read_manifest(directory) == manifest:
        return
    rows = [manifest.rows[name] for name in sorted(manifest.rows)]
    schema = ROW_SCHEMA.with_metadata({META_KEY: json.dumps(manifest.meta, sort_keys=True)})
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = directory / f".{MANIFEST}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def make_row(name: str, shard: WrittenShard | ScannedShard, **provenance: Any) -> dict[str, Any]:
    row = {field: None for field in ROW_SCHEMA.names}
    row |= {"shard": name, "count": shard.count, "sha256": shard.sha256, "bytes": shard.bytes,
            "class_hist": list(shard.class_hist)}
    row |= provenance
    assert set(row) == set(ROW_SCHEMA.names), set(row) ^ set(ROW_SCHEMA.names)
    return row


def verified(directory: Path, row: dict[str, Any] | None) -> bool:
    """A finished shard: its file exists and matches the manifest's size and checksum."""
    if row is None:
        return False
    path = directory / row["shard"]
    return (path.is_file() and path.stat().st_size == row["bytes"]
            and sha256_file(path) == row["sha256"])
