"""The decoded cache of a synthetic shard directory on a node: where it lies (named by the
manifest's sha256), whether it can be used as it is, and building it once per node under a lock.
`adr_scale.data.synthetic.SyntheticSet` maps it and draws from it; the manifest is read here too
(`describe_shards`), and `check_cache` is what the Ray driver checks without building.

Why a cache. The tar shards (data_pipeline's output) are the storage and interchange format, but a
per-epoch stream that restarts at the head of each shard reads only a small share of a large set.
So on first use on a node the shards are decoded once into one uint8 array file (N x C x H x W)
plus int64 labels, in `cache_dir` (default: under the system temp dir, node-local), in a
directory named by the sha256 of the manifest file, so a changed set gets a cache of its own.
One process per node builds it (an flock on DIGEST.lock; the others wait and then map it),
decoding the shards in parallel worker processes with webdataset's tar reader or our parser (the
same bytes, tested) while checking every shard's size, sha256 and sample count against the
manifest. The build is written under a temporary name and renamed when complete. A cache whose
files do not match their recorded sizes (a truncated copy), that holds a label outside [0, K), or
whose files do not match the digest in meta.json (all labels and 64 sampled blocks of images,
checked on the first open per process) is reported in one line and rebuilt from the shards, or
refused in one line when the shards cannot rebuild it.

A bad shard stops the build naming it (SyntheticDataError); with skip_bad=True it is left out and
recorded in the cache's meta.json and in `bad_shards`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from adr_scale.config import ConfigError
from adr_scale.shard_format import MANIFEST, decode_shard_task, read_manifest_rows

CACHE_FORMAT = 2  # meta.json "format"; a cache of another format is rebuilt (1 had no digest)
CHECK_BLOCKS, CHECK_BLOCK_BYTES = 64, 1 << 16  # the digest's sample of images.u8: 4 MiB in all
_VERIFIED: set[tuple] = set()  # SyntheticCache._identity() of the caches this process has checked


class SyntheticDataError(ConfigError, RuntimeError):
    """A shard, or a damaged cache that cannot be rebuilt, is unusable; the one-line message names
    the file. A ConfigError, so the CLIs print it as `error: ...` and exit 2."""


def default_cache_dir() -> Path:
    """Node-local: the system temp directory, one folder per user."""
    return Path(tempfile.gettempdir()) / f"adr-scale-synthetic-{os.getuid()}"


class SyntheticCache:
    """A shard directory's decoded cache on this node, at `cache_path`: located from the manifest,
    checked, and built from the shards when missing or damaged."""

    def __init__(self, directory: str | Path, cache_dir: str | Path | None = None,
                 skip_bad: bool = False) -> None:
        self.directory = Path(directory)
        self.skip_bad = skip_bad
        meta, self._rows = _manifest(self.directory)
        self.digest = hashlib.sha256((self.directory / MANIFEST).read_bytes()).hexdigest()
        self.num_classes: int = int(meta["num_classes"])
        self.image_shape: tuple[int, int, int] = tuple(int(v) for v in meta["image_shape"])
        self.root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.cache_path = self.root / self.digest
        self.built = False  # whether this process built the cache

    # -- building and checking -------------------------------------------------------------------

    def _ensure_built(self, tar_reader: str, workers: int | None, progress: bool) -> None:
        """Build the cache, under the node's lock, unless it is there and sound (`built`:
        whether this call built it)."""
        if (self._problem() or self._damage()) is not None:
            self._make_root()
            with build_lock(self._lock_path()):
                # another process may have built it while we waited
                problem = self._problem() or self._damage()
                if problem is not None:
                    if self.cache_path.exists():
                        self._check_rebuildable(problem)
                        print(f"synthetic cache {self.cache_path}: {problem}; rebuilding from "
                              f"the shards", file=sys.stderr, flush=True)
                        shutil.rmtree(self.cache_path)
                    self._build(tar_reader, workers, progress)
                    _VERIFIED.add(self._identity())
                    self.built = True

    def _lock_path(self) -> Path:
        return self.root / f"{self.digest}.lock"

    def _make_root(self) -> None:
        """The cache directory and its lock file, or a one-line ConfigError saying what to do."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self._lock_path(), os.O_CREAT | os.O_RDWR, 0o644))
        except OSError as exc:
            raise ConfigError(f"data.synthetic_cache: cannot write to {str(self.root)!r} "
                              f"({exc.strerror or exc}); allowed: a writable node-local directory "
                              "(point data.synthetic_cache at one, e.g. on the node's local disk)"
                              ) from None

    def _damage(self) -> str | None:
        """What is wrong with the contents of a cache whose sizes are right (None: nothing found):
        a label outside [0, K) (every open), a digest mismatch (the first open per process of
        these files). Runs only after _problem() found nothing."""
        labels = self.cache_path / "labels.i64"
        bad = _first_out_of_range(np.fromfile(labels, np.int64), self.num_classes)
        if bad is not None:
            row, value = bad
            return (f"{labels} holds label {value} at row {row}; allowed: a class in "
                    f"[0, {self.num_classes})")
        identity = self._identity()
        if identity in _VERIFIED:
            return None
        stored = json.loads((self.cache_path / "meta.json").read_text()).get("check")
        if stored != _cache_check(self.cache_path):
            return (f"{self.cache_path / 'images.u8'} or labels.i64 does not match the digest in "
                    "meta.json (damaged?)")
        _VERIFIED.add(identity)
        return None

    def _identity(self) -> tuple:
        """The cache files as they are now: a file rewritten in place gets another mtime."""
        stats = [(self.cache_path / n).stat() for n in ("images.u8", "labels.i64", "meta.json")]
        return (str(self.cache_path), *((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats))

    def _check_rebuildable(self, problem: str) -> None:
        """Refuse, in one line, to delete a damaged cache that the shards on disk cannot rebuild
        (shards the cache did not leave out as bad are missing or have another size)."""
        meta_file = self.cache_path / "meta.json"
        try:
            left_out = set(json.loads(meta_file.read_text())["bad_shards"])
        except (OSError, ValueError, KeyError, TypeError):
            left_out = set()
        missing = [r["shard"] for r in self._rows if r["shard"] not in left_out
                   and _size(self.directory / r["shard"]) != r["bytes"]]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise SyntheticDataError(
                f"data.synthetic_cache: {problem}, and it cannot be rebuilt: "
                f"{self.directory / missing[0]}{more} missing or resized; allowed: restore the "
                f"shards of {self.directory} (data_pipeline.verify), then rerun")

    def _problem(self) -> str | None:
        """Why the cache at cache_path cannot be used as it is (None: it can)."""
        meta_file = self.cache_path / "meta.json"
        if not meta_file.is_file():
            return "no cache yet" if not self.cache_path.exists() else "meta.json is missing"
        try:
            meta = json.loads(meta_file.read_text())
            n = int(meta["num_images"])
            fmt, digest, bad = meta["format"], meta["manifest_sha256"], meta["bad_shards"]
        except (ValueError, KeyError, TypeError):
            return "meta.json is unreadable"
        if fmt == 1:
            return "format 1 holds no integrity digest"
        if fmt != CACHE_FORMAT or digest != self.digest:
            return f"format {fmt} of manifest {digest[:12]}, expected {CACHE_FORMAT} of {self.digest[:12]}"
        if bad and not self.skip_bad:
            return f"built without the bad shards {', '.join(sorted(bad))}, data.skip_bad_shards is false"
        for name, expected in (("images.u8", n * math.prod(self.image_shape)), ("labels.i64", n * 8)):
            path = self.cache_path / name
            size = path.stat().st_size if path.is_file() else -1
            if size != expected:
                return f"{name} holds {max(size, 0)} bytes, expected {expected} (truncated?)"
        return None

    def _build(self, tar_reader: str, workers: int | None, progress: bool) -> None:
        rows, shape = self._rows, self.image_shape
        per_image = math.prod(shape)
        total = sum(r["count"] for r in rows)
        need = total * (per_image + 8)
        free = shutil.disk_usage(self.root).free
        if free < need * 1.05:
            raise ConfigError(f"data.synthetic_cache: {self.root} has {free / 2**30:.2f} GiB free, the "
                              f"cache of {self.directory} needs {need / 2**30:.2f} GiB; allowed: a "
                              "directory with room")
        tmp = self.root / f".{self.digest}.{socket.gethostname()}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            images, labels = tmp / "images.u8", tmp / "labels.i64"
            for path, size in ((images, total * per_image), (labels, total * 8)):
                with open(path, "wb") as f:
                    f.truncate(size)
            tasks, row = [], 0
            for r in rows:
                tasks.append({"path": str(self.directory / r["shard"]), "sha256": r["sha256"],
                              "count": r["count"], "size": r["bytes"], "shape": shape,
                              "num_classes": self.num_classes, "images_file": str(images),
                              "labels_file": str(labels), "row": row, "reader": tar_reader})
                row += r["count"]
            errors = _run_tasks(tasks, workers, progress, f"decode {self.directory.name}")
            bad = {name: error for name, error in errors.items() if error is not None}
            if bad and not self.skip_bad:
                name = min(bad)
                more = f" (and {len(bad) - 1} more bad shards)" if len(bad) > 1 else ""
                raise SyntheticDataError(f"data.synthetic: {self.directory / name}: {bad[name]}"
                                         f"{more}; allowed: shards that match the manifest "
                                         "(data_pipeline.verify), or data.skip_bad_shards=true")
            kept = _compact(images, labels, rows, bad, shape) if bad else total
            if kept == 0:
                raise SyntheticDataError(f"data.synthetic: {self.directory}: no readable shard; bad: "
                                         + "; ".join(f"{k}: {v}" for k, v in sorted(bad.items())))
            for path in (images, labels):
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
            meta = {"format": CACHE_FORMAT, "manifest_sha256": self.digest, "num_images": kept,
                    "image_shape": list(shape), "num_classes": self.num_classes,
                    "check": _cache_check(tmp),
                    "source": str(self.directory.resolve()), "bad_shards": bad,
                    "built_by": f"pid {os.getpid()} on {socket.gethostname()}",
                    "tar_reader": tar_reader}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.cache_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if bad:
            print(f"synthetic cache {self.cache_path}: left out {len(bad)} bad shard(s): "
                  + "; ".join(f"{k}: {v}" for k, v in sorted(bad.items())), file=sys.stderr)


def describe_shards(directory: str | Path) -> tuple[int, int, tuple[int, int, int]]:
    """(images, classes, (C, H, W)) from a shard directory's manifest alone (no cache, no decode)."""
    meta, rows = _manifest(Path(directory))
    return (sum(r["count"] for r in rows), int(meta["num_classes"]),
            tuple(int(v) for v in meta["image_shape"]))


def _manifest(directory: Path) -> tuple[dict, list[dict]]:
    """The manifest's (metadata, rows); a missing, corrupt or empty one is a one-line ConfigError."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"data.synthetic: {str(directory)!r} holds no {MANIFEST}; allowed: a "
                          "directory written by data_pipeline.generate_ddpm or shard_npz")
    try:
        meta, rows = read_manifest_rows(directory)
        meta["num_classes"], meta["image_shape"]  # noqa: B018 - present in every manifest we write
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds on a corrupt file
        raise ConfigError(f"data.synthetic: {manifest} is not a readable manifest "
                          f"({type(exc).__name__}); allowed: a manifest data_pipeline wrote "
                          "(rerun the command that made it)") from None
    if sum(r["count"] for r in rows) == 0:
        raise ConfigError(f"data.synthetic: {str(directory)!r} has no finished shard yet; "
                          "allowed: a directory with at least one shard in its manifest")
    return meta, rows


def check_cache(directory: str | Path, cache_dir: str | Path | None = None,
                skip_bad: bool = False) -> None:
    """What opening the cache on this node would refuse, without building or mapping it (the Ray
    driver, before it writes run files; its workers build): an unwritable data.synthetic_cache
    where the cache must be built, a damaged cache that the shards cannot rebuild."""
    synth = SyntheticCache(directory, cache_dir, skip_bad)
    problem = synth._problem() or synth._damage()
    if problem is None:
        return
    synth._make_root()
    if synth.cache_path.exists():
        synth._check_rebuildable(problem)


def _cache_check(cache: Path) -> dict:
    """A cheap digest of a cache directory's files: blake2b of all of labels.i64 and of
    CHECK_BLOCKS blocks of images.u8 at evenly spaced offsets (first and last included), with both
    sizes. Reads 4 MiB of images at most: any damage to the whole file (a flipped, zeroed or
    swapped copy) is seen, a few bytes between the blocks are not."""
    images, labels = cache / "images.u8", cache / "labels.i64"
    size = images.stat().st_size
    h = hashlib.blake2b(digest_size=32)
    with open(images, "rb") as f:
        if size <= CHECK_BLOCKS * CHECK_BLOCK_BYTES:
            h.update(f.read())
        else:
            span = size - CHECK_BLOCK_BYTES
            for i in range(CHECK_BLOCKS):
                h.update(os.pread(f.fileno(), CHECK_BLOCK_BYTES, i * span // (CHECK_BLOCKS - 1)))
    return {"images_bytes": size, "images_blake2b": h.hexdigest(),
            "sampled_blocks": [CHECK_BLOCKS, CHECK_BLOCK_BYTES],
            "labels_bytes": labels.stat().st_size,
            "labels_blake2b": hashlib.blake2b(labels.read_bytes(), digest_size=32).hexdigest()}


def _first_out_of_range(labels: np.ndarray, num_classes: int) -> tuple[int, int] | None:
    """(row, label) of the first label outside [0, num_classes), or None."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    return (int(bad[0]), int(labels[bad[0]])) if bad.size else None


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else -1


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (node-local); says once whom it waits for. One builder per
    node of a decoded cache: this one and adr_scale.data.generic's imagefolder cache."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            print(f"synthetic cache: waiting for {path} (held by {holder})", file=sys.stderr,
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _run_tasks(tasks: list[dict], workers: int | None, progress: bool, desc: str,
               ) -> dict[str, str | None]:
    """decode_shard_task over `tasks`, in worker processes when more than one is useful."""
    from tqdm.auto import tqdm

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # a worker per core, but none for less than ~20k images: spawning one costs seconds
    images = sum(t["count"] for t in tasks)
    workers = min(len(tasks), workers or min(cores or 1, -(-images // 20_000)))
    results: dict[str, str | None] = {}
    with tqdm(total=sum(t["count"] for t in tasks), desc=desc, unit="img", unit_scale=True,
              disable=not progress, dynamic_ncols=True) as bar:
        if workers <= 1:
            done = map(decode_shard_task, tasks)
        else:  # spawn: the workers import only adr_scale.shard_format (no torch, no fork hazards)
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            done = pool.map(decode_shard_task, tasks)
        counts = {os.path.basename(t["path"]): t["count"] for t in tasks}
        try:
            for name, error in done:
                results[name] = error
                bar.update(counts[name])
        finally:
            if workers > 1:
                pool.shutdown(cancel_futures=True)
    return results


def _compact(images: Path, labels: Path, rows: list[dict], bad: dict[str, str],
             shape: tuple[int, ...]) -> int:
    """Move the good shards' rows together (in shard order) and cut the files; returns N."""
    total = sum(r["count"] for r in rows)
    im = np.memmap(images, np.uint8, "r+", shape=(total, *shape))
    lb = np.memmap(labels, np.int64, "r+", shape=(total,))
    src = dst = 0
    for r in rows:
        n = r["count"]
        if r["shard"] not in bad:
            if src != dst:  # dst < src: numpy copies overlapping ranges correctly
                im[dst:dst + n] = im[src:src + n]
                lb[dst:dst + n] = lb[src:src + n]
            dst += n
        src += n
    im.flush()
    lb.flush()
    del im, lb
    os.truncate(images, dst * math.prod(shape))
    os.truncate(labels, dst * 8)
    return dst
