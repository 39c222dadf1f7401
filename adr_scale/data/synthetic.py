"""Synthetic images from a shard directory (data_pipeline's output), mixed into every batch exactly.

API (everything else in this file is private):

    stream = SyntheticStream(directory, batch_size, seed=0, rank=0, skip_bad=False, num_workers=0)
    for images, labels in stream.epoch(epoch, num_batches):
        ...  # images: uint8 (batch_size, C, H, W) on the CPU; labels: int64 (batch_size,)
    stream.num_images, stream.num_classes, stream.image_shape   # from manifest.parquet
    stream.bad_shards   # {shard file name: error} skipped so far (only with skip_bad=True)

    real_per_rank, synthetic_per_rank = mixed_batch_sizes(global_batch, fraction, world_size)
    images, labels = concat_batches((real_images, real_labels), (synth_images, synth_labels))

Sampling (Gowal et al. 2021; Wang et al. 2023: generated images are drawn with replacement):
every rank draws shards at random, with probability proportional to their sample counts, from all
shards listed in the manifest (shards an unfinished run has not listed are never read), keeps
`open_shards` tar streams open at once and interleaves them, then shuffles through a buffer. It is
"resampled": the stream never runs dry, so every rank yields exactly `num_batches` batches per
epoch and DDP ranks stay in step. The draws depend only on (seed, epoch, rank[, loader worker])
for given open_shards and shuffle_buffer; ranks differ by seed, which is all the splitting a
with-replacement stream needs.

The tars are standard WebDataset shards (webdataset's TarWriter writes them and wds.WebDataset
reads them, as a test checks). For CPU cost per image this reader parses them with a small
streaming ustar parser instead of webdataset's tarfile-based one (13-24x cheaper per sample), and
decodes data_pipeline's PNGs (filter "Up", stored zlib) a batch at a time with numpy; other PNGs
go to libpng. It uses webdataset's shuffle buffer. docs/data.md has the measurements.

A shard that cannot be read or decoded raises SyntheticDataError naming it; with skip_bad=True its
remaining samples are skipped, it is recorded in `bad_shards` and never drawn again.
"""

from __future__ import annotations

import json
import os
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import webdataset as wds

from adr_scale.config import ConfigError

MANIFEST = "manifest.parquet"  # written by data_pipeline.shards
META_KEY = b"adr_scale"

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 (B, C, H, W), int64 (B,)


class SyntheticDataError(RuntimeError):
    """A shard could not be read or decoded; the message names the shard."""


class SyntheticStream:
    """Per-rank batches of decoded synthetic images; see the module docstring."""

    def __init__(self, directory: str | Path, batch_size: int, *, seed: int = 0, rank: int = 0,
                 skip_bad: bool = False, num_workers: int = 0, open_shards: int = 8,
                 shuffle_buffer: int = 4096, tar_reader: str = "webdataset") -> None:
        if tar_reader not in TAR_READERS:
            raise ConfigError(f"data.tar_reader: invalid value {tar_reader!r}; allowed: "
                              + ", ".join(TAR_READERS))
        self.tar_reader = TAR_READERS[tar_reader]
        if batch_size < 1:
            raise ConfigError(f"batch_size: {batch_size}; allowed: an integer >= 1")
        self.directory = Path(directory)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.skip_bad, self.num_workers = skip_bad, num_workers
        self.open_shards, self.shuffle_buffer = open_shards, shuffle_buffer
        meta, self._shards, self._counts = _read_manifest(self.directory)
        self.num_images: int = sum(self._counts)
        self.num_classes: int = meta["num_classes"]
        self.image_shape: tuple[int, int, int] = tuple(meta["image_shape"])  # (C, H, W)
        self.bad_shards: dict[str, str] = {}

    def epoch(self, epoch: int, num_batches: int) -> Iterator[Batch]:
        """Exactly `num_batches` batches; the same (seed, epoch, rank) gives the same batches."""
        if self.num_workers == 0:
            yield from self._strip(self._worker_batches(epoch, num_batches, 0, 1))
            return
        loader = torch.utils.data.DataLoader(_Epoch(self, epoch, num_batches), batch_size=None,
                                             num_workers=self.num_workers)
        yield from self._strip(iter(loader))  # the loader takes workers in turn: deterministic

    def _strip(self, batches: Iterator) -> Iterator[Batch]:
        for images, labels, bad in batches:
            self.bad_shards.update(bad)
            yield images, labels

    def _worker_batches(self, epoch: int, num_batches: int, worker: int, workers: int):
        """Worker `worker` of `workers` makes batches worker, worker + workers, ... of the epoch."""
        mine = len(range(worker, num_batches, workers))
        rng = random.Random(f"adr-scale/synthetic/{self.seed}/{epoch}/{self.rank}/{worker}")
        bad: dict[str, str] = dict(self.bad_shards)
        reported: set[str] = set(bad)
        raw = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(
            self._interleaved(rng, bad))
        for _ in range(mine):
            pixels: list[np.ndarray | bytes] = []  # see _decode_png
            labels: list[int] = []
            while len(pixels) < self.batch_size:
                sample = next(raw)
                if sample["__shard__"] in bad:  # buffered before its shard failed
                    continue
                try:
                    image, label = self._decode(sample)
                except SyntheticDataError as exc:
                    self._fail(sample["__url__"], exc, bad)  # raises unless skip_bad
                    continue
                pixels.append(image)
                labels.append(label)
            new = {k: v for k, v in bad.items() if k not in reported}
            reported |= set(new)
            images = torch.from_numpy(_unfilter(pixels, self.image_shape))  # (B, C, H, W)
            yield images, torch.tensor(labels, dtype=torch.int64), new

    def _interleaved(self, rng: random.Random, bad: dict[str, str]) -> Iterator[dict]:
        """Raw samples (png bytes, cls) from `open_shards` shards at once, drawn with replacement."""
        open_: list[tuple[str, Iterator[dict]]] = []
        idle = 0  # shards in a row that ended without giving a sample (empty or bad)
        while True:
            if len(open_) < self.open_shards:
                healthy = [i for i, s in enumerate(self._shards)
                           if Path(s).name not in bad and self._counts[i] > 0]
                if not healthy:
                    raise SyntheticDataError(f"{self.directory}: no readable shard left; bad: "
                                             + ", ".join(sorted(bad)))
                weights = [self._counts[i] for i in healthy]
                while len(open_) < self.open_shards:
                    url = self._shards[rng.choices(healthy, weights=weights)[0]]
                    open_.append((url, self.tar_reader(url)))
            j = rng.randrange(len(open_))
            url, samples = open_[j]
            try:
                sample = next(samples)
            except StopIteration:
                open_.pop(j)
                idle += 1
                if idle > 10 * (len(self._shards) + self.open_shards):
                    raise SyntheticDataError(f"{self.directory}: shards yield no samples") from None
                continue
            except (OSError, ValueError) as exc:  # unreadable file, malformed or truncated tar
                self._fail(url, exc, bad)
                open_ = [(u, it) for u, it in open_ if Path(u).name not in bad]
                continue
            idle = 0
            yield sample

    def _decode(self, sample: dict) -> tuple[np.ndarray | bytes, int]:
        if "png" not in sample or "cls" not in sample:
            raise SyntheticDataError(f"sample {sample.get('__key__')}: has members "
                                     f"{sorted(k for k in sample if not k.startswith('__'))}, "
                                     "expected png and cls")
        try:
            shape, pixels = _decode_png(sample["png"])
            label = int(sample["cls"])
        except (ValueError, RuntimeError, zlib.error) as exc:
            raise SyntheticDataError(f"sample {sample.get('__key__')}: {exc}") from None
        if shape != self.image_shape or not 0 <= label < self.num_classes:
            raise SyntheticDataError(f"sample {sample.get('__key__')}: image {shape} class "
                                     f"{label}, expected {self.image_shape} and a class in "
                                     f"[0, {self.num_classes})")
        return pixels, label

    def _fail(self, url: str, exc: Exception, bad: dict[str, str]) -> None:
        name = Path(url).name
        message = f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        if not self.skip_bad:
            raise SyntheticDataError(f"{self.directory}/{message}") from exc
        bad[name] = message


class _Epoch(torch.utils.data.IterableDataset):
    """One epoch of a SyntheticStream, split across DataLoader workers."""

    def __init__(self, stream: SyntheticStream, epoch: int, num_batches: int) -> None:
        self.stream, self.epoch, self.num_batches = stream, epoch, num_batches

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self.stream._worker_batches(self.epoch, self.num_batches, worker, workers)


_END = bytes(512)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_png(data: bytes) -> tuple[tuple[int, int, int], np.ndarray | bytes]:
    """PNG bytes -> ((C, H, W), pixels): uint8 (C, H, W), or for data_pipeline's own PNGs the
    inflated, still-filtered rows (bytes) that `_unfilter` finishes for a whole batch at once.

    data_pipeline writes 8-bit grey or RGB PNGs whose rows all use filter 2 ("Up"): those need only
    zlib and one cumulative sum over rows, several times cheaper than a general decoder. Any other
    PNG goes to torchvision's libpng decoder.
    """
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
        c = {0: 1, 2: 3}.get(colour)
        if depth == 8 and c is not None and interlace == 0:
            idat, pos = [], 33  # after the signature and the 25-byte IHDR chunk
            while pos + 8 <= len(data):
                length = int.from_bytes(data[pos:pos + 4], "big")
                kind = data[pos + 4:pos + 8]
                if kind == b"IDAT":
                    idat.append(data[pos + 8:pos + 8 + length])
                elif kind == b"IEND":
                    break
                pos += 12 + length
            raw = zlib.decompress(b"".join(idat))
            stride = 1 + w * c
            if len(raw) != h * stride:
                raise ValueError(f"PNG holds {len(raw)} bytes, expected {h * stride}")
            if raw[::stride].count(2) == h:  # every row filtered "Up"
                return (c, h, w), raw
    from torchvision.io import ImageReadMode, decode_png  # only for PNGs written elsewhere

    image = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                       mode=ImageReadMode.UNCHANGED)
    return tuple(image.shape), image.numpy()


def _unfilter(pixels: list[np.ndarray | bytes], shape: tuple[int, int, int]) -> np.ndarray:
    """_decode_png's outputs of one shape -> uint8 (B, C, H, W)."""
    c, h, w = shape
    ours = [i for i, p in enumerate(pixels) if isinstance(p, bytes)]
    if len(ours) == len(pixels):  # all ours: undo "Up" with running sums over rows, mod 256
        rows = np.frombuffer(bytearray(b"".join(pixels)), np.uint8).reshape(len(pixels), h, -1)
        for r in range(1, h):  # column 0 holds each row's filter type; it is dropped below
            rows[:, r] += rows[:, r - 1]  # uint8 wraps mod 256, as PNG's filter arithmetic does
        images = rows[:, :, 1:].reshape(len(pixels), h, w, c)
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    out = np.empty((len(pixels), c, h, w), np.uint8)
    if ours:
        out[ours] = _unfilter([pixels[i] for i in ours], shape)
    for i, p in enumerate(pixels):
        if not isinstance(p, bytes):
            out[i] = p
    return out


def _webdataset_samples(path: str) -> Iterator[dict]:
    """The same samples through webdataset's own tar reader (the default; tarfile underneath)."""
    with open(path, "rb") as stream:
        files = wds.tariterators.tar_file_expander([{"url": path, "stream": stream}])
        for sample in wds.tariterators.group_by_keys(files):
            sample["__shard__"] = os.path.basename(path)
            yield sample


def _tar_samples(path: str) -> Iterator[dict]:
    """WebDataset samples ({"__key__", "__url__", "__shard__", ext: bytes}) of an uncompressed tar.

    A streaming parser of the 512-byte ustar headers, 13-24x cheaper per sample than Python's
    tarfile (which webdataset's reader uses) and enough for what TarWriter writes: regular
    members, names up to 100 bytes plus the ustar prefix. Members are grouped into samples by the
    name up to the first dot of the base name, as webdataset does.
    """
    shard = os.path.basename(path)
    with open(path, "rb", buffering=1 << 20) as f:
        read = f.read
        key, sample, offset = None, None, 0
        while True:
            header = read(512)
            if header == _END or not header:
                break
            if len(header) < 512 or header[257:262] != b"ustar":
                raise ValueError(f"no tar header at byte {offset}")
            size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
            padded = size + (-size % 512)
            block = read(padded)
            if len(block) < size:
                raise ValueError(f"member at byte {offset} is truncated")
            offset += 512 + padded
            kind = header[156]
            if kind in b"xgLK":
                raise ValueError(f"unsupported tar member type {chr(kind)!r} (pax or GNU long name)")
            if kind not in b"0\0":
                continue  # directories, links: no sample data
            name = header[:100].split(b"\0", 1)[0]
            if header[345] != 0:  # ustar prefix (long paths)
                name = header[345:500].split(b"\0", 1)[0] + b"/" + name
            dot = name.find(b".", name.rfind(b"/") + 1)
            k, ext = (name, b"") if dot < 0 else (name[:dot], name[dot + 1:])
            if k != key:
                if sample:
                    yield sample
                key, sample = k, {"__key__": k.decode(), "__url__": path, "__shard__": shard}
            sample[ext.decode().lower()] = block[:size] if padded != size else block
        if sample:
            yield sample


# data.tar_reader: webdataset's reader, or the streaming ustar parser above (several times less CPU
# per sample; docs/data.md has the numbers) for data loaders that cannot keep up.
TAR_READERS = {"webdataset": _webdataset_samples, "fast": _tar_samples}


def _read_manifest(directory: Path) -> tuple[dict, list[str], list[int]]:
    path = directory / MANIFEST
    if not path.is_file():
        raise ConfigError(f"data.synthetic: {str(directory)!r} has no {MANIFEST}; allowed: a "
                          "directory written by data_pipeline.generate_ddpm or shard_npz")
    table = pq.read_table(path, columns=["shard", "count"])
    meta = json.loads(table.schema.metadata[META_KEY])
    shards = [str(directory / name) for name in table.column("shard").to_pylist()]
    counts = table.column("count").to_pylist()
    if not shards or sum(counts) == 0:
        raise ConfigError(f"data.synthetic: {str(directory)!r} has no finished shard yet; allowed: "
                          "a directory with at least one shard in its manifest")
    return meta, shards, counts


# ---------------------------------------------------------------------------------------------
# Mixing real and synthetic data


def mixed_batch_sizes(global_batch: int, fraction: float, world_size: int) -> tuple[int, int]:
    """(real, synthetic) images per rank so that every global batch holds exactly
    round(fraction * global_batch) synthetic images (768 of 1024 at 0.75, Sec. 5.4).

    Both counts must split equally across ranks; otherwise a ConfigError names the numbers.
    """
    if global_batch < 1 or world_size < 1:
        raise ConfigError(f"train.batch_size: {global_batch} on {world_size} ranks; allowed: "
                          "positive integers")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"data.synthetic_fraction: {fraction}; allowed: a number in [0, 1]")
    synthetic = round(fraction * global_batch)
    real = global_batch - synthetic
    if real % world_size or synthetic % world_size:
        raise ConfigError(
            f"data.synthetic_fraction: {fraction} of train.batch_size {global_batch} is {synthetic} "
            f"synthetic + {real} real images, which {world_size} ranks cannot split equally; "
            f"allowed: a batch size and fraction whose synthetic and real counts are both "
            f"multiples of {world_size}")
    return real // world_size, synthetic // world_size


def concat_batches(real: Batch, synthetic: Batch) -> Batch:
    """One batch: the real images then the synthetic ones, on the real batch's device."""
    (xr, yr), (xs, ys) = real, synthetic
    if xr.dtype != xs.dtype or xr.shape[1:] != xs.shape[1:]:
        raise ValueError(f"data.synthetic: synthetic images are {xs.dtype} {tuple(xs.shape[1:])}, "
                         f"the real ones {xr.dtype} {tuple(xr.shape[1:])}; allowed: the same "
                         "image shape and dtype")
    device = xr.device
    return (torch.cat([xr, xs.to(device, non_blocking=True)]),
            torch.cat([yr, ys.to(device, non_blocking=True)]))
