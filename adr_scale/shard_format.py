"""The synthetic-shard format, defined once for its writer (data_pipeline) and its reader
(adr_scale.data.synthetic): names, the manifest's metadata key, the PNG flavour, two tar parsers.

    DIR/shard-000000.tar ...   WebDataset tars; one sample = KEY.png (8-bit grey or RGB, every row
                               filtered "Up", zlib stored), KEY.cls (ASCII class), KEY.json (optional)
    DIR/manifest.parquet       one row per finished shard (count, sha256, bytes, ...); the schema
                               metadata under META_KEY describes the set (num_classes, image_shape)

No torch here: the parallel cache builder's worker processes import only this module (and
webdataset when that parser is chosen).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MANIFEST = "manifest.parquet"
META_KEY = b"adr_scale"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FILTER_UP = 2  # every row stores its difference to the row above (PNG spec, filter type 2)
_TAR_END = bytes(512)


def read_manifest_rows(directory: Path) -> tuple[dict, list[dict]]:
    """(metadata, rows) of DIR/manifest.parquet; rows in shard order. FileNotFoundError if absent."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(directory) / MANIFEST)
    meta = json.loads(table.schema.metadata[META_KEY])
    rows = sorted(table.to_pylist(), key=lambda r: r["shard"])
    return meta, rows


# ---------------------------------------------------------------------------------------------
# PNG


def decode_png(data: bytes) -> tuple[tuple[int, int, int], np.ndarray | bytes]:
    """PNG bytes -> ((C, H, W), pixels): for data_pipeline's own PNGs the inflated, still-filtered
    rows (bytes) that `unfilter` finishes for many images at once; any other PNG goes to libpng
    (torchvision) and comes back as uint8 (C, H, W).

    data_pipeline writes 8-bit grey or RGB PNGs whose rows all use filter "Up": those need only
    zlib and one running sum over rows, several times cheaper than a general decoder.
    """
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
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
            if raw[::stride].count(PNG_FILTER_UP) == h:
                return (c, h, w), raw
    import torch
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_png as libpng

    image = libpng(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    return tuple(image.shape), image.numpy()


def unfilter(pixels: list[np.ndarray | bytes], shape: tuple[int, int, int]) -> np.ndarray:
    """decode_png's outputs of one shape -> uint8 (B, C, H, W)."""
    c, h, w = shape
    ours = [i for i, p in enumerate(pixels) if isinstance(p, bytes)]
    if len(ours) == len(pixels):  # undo "Up" with running sums over rows, mod 256
        rows = np.frombuffer(bytearray(b"".join(pixels)), np.uint8).reshape(len(pixels), h, -1)
        for r in range(1, h):  # column 0 holds each row's filter type; it is dropped below
            rows[:, r] += rows[:, r - 1]  # uint8 wraps mod 256, as PNG's filter arithmetic does
        images = rows[:, :, 1:].reshape(len(pixels), h, w, c)
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    out = np.empty((len(pixels), c, h, w), np.uint8)
    if ours:
        out[ours] = unfilter([pixels[i] for i in ours], shape)
    for i, p in enumerate(pixels):
        if not isinstance(p, bytes):
            out[i] = p
    return out


# ---------------------------------------------------------------------------------------------
# Tar parsers: both yield WebDataset samples {"__key__", "__url__", ext: bytes} in file order.


def webdataset_samples(stream: io.BufferedIOBase, url: str) -> Iterator[dict]:
    """The samples through webdataset's own tar reader (Python's tarfile underneath)."""
    import webdataset as wds

    files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}])
    yield from wds.tariterators.group_by_keys(files)


def tar_samples(stream: io.BufferedIOBase, url: str) -> Iterator[dict]:
    """A streaming parser of the 512-byte ustar headers, several times cheaper per sample than
    tarfile and enough for what TarWriter writes (regular members, names up to 100 bytes plus the
    ustar prefix). Members group into samples by the name up to the first dot of the base name,
    as webdataset does. Raises ValueError on anything malformed or truncated."""
    read = stream.read
    key, sample, offset = None, None, 0
    while True:
        header = read(512)
        if header == _TAR_END or not header:
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
            key, sample = k, {"__key__": k.decode(), "__url__": url}
        sample[ext.decode().lower()] = block[:size] if padded != size else block
    if sample:
        yield sample


TAR_READERS = {"webdataset": webdataset_samples, "fast": tar_samples}


def shard_file_samples(path: str | os.PathLike, reader: str = "fast") -> Iterator[dict]:
    """The samples of one shard file, read with `reader` (a TAR_READERS name)."""
    with open(path, "rb", buffering=1 << 20) as f:
        yield from TAR_READERS[reader](f, str(path))


# ---------------------------------------------------------------------------------------------
# Decoding one shard into the cache (runs in the cache builder's worker processes)


def decode_shard_into(path: str, *, sha256: str, count: int, size: int, shape: tuple[int, int, int],
                      num_classes: int, images_file: str, labels_file: str, row: int,
                      reader: str = "fast", chunk: int = 1024) -> None:
    """Check shard `path` against its manifest row (size, sha256, sample count) while reading it
    once, decode its images and write them to rows [row, row + count) of the cache files
    (uint8 (N, C, H, W) and int64 (N,)). Raises ValueError saying what is wrong."""
    data = Path(path).read_bytes()  # one shard (tens of MB): read once for the hash and the parse
    if len(data) != size:
        raise ValueError(f"{len(data)} bytes, the manifest says {size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"sha256 is {digest[:16]}..., the manifest says {sha256[:16]}...")
    c, h, w = shape
    images = np.memmap(images_file, np.uint8, "r+", offset=row * c * h * w, shape=(count, c, h, w))
    labels = np.memmap(labels_file, np.int64, "r+", offset=row * 8, shape=(count,))
    done, pixels, classes = 0, [], []
    for sample in TAR_READERS[reader](io.BytesIO(data), str(path)):
        if "png" not in sample or "cls" not in sample:
            members = sorted(k for k in sample if not k.startswith("__"))
            raise ValueError(f"sample {sample['__key__']} has members {members}, expected png and cls")
        got, pix = decode_png(sample["png"])
        label = int(sample["cls"])
        if got != tuple(shape) or not 0 <= label < num_classes:
            raise ValueError(f"sample {sample['__key__']}: image {got} class {label}, expected "
                             f"{tuple(shape)} and a class in [0, {num_classes})")
        if done + len(pixels) >= count:
            raise ValueError(f"more samples than the manifest's {count}")
        pixels.append(pix)
        classes.append(label)
        if len(pixels) == chunk:
            images[done:done + chunk] = unfilter(pixels, shape)
            labels[done:done + chunk] = classes
            done, pixels, classes = done + chunk, [], []
    if pixels:
        images[done:done + len(pixels)] = unfilter(pixels, shape)
        labels[done:done + len(pixels)] = classes
        done += len(pixels)
    if done != count:
        raise ValueError(f"{done} samples, the manifest says {count}")
    images.flush()
    labels.flush()


def decode_shard_task(task: dict) -> tuple[str, str | None]:
    """decode_shard_into for a process pool: (shard name, None) or (shard name, the error)."""
    name = os.path.basename(task["path"])
    try:
        decode_shard_into(**task)
    except Exception as exc:  # noqa: BLE001 - any failure names the shard; the builder decides
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return name, f"{type(exc).__name__}: {text}" if not isinstance(exc, ValueError) else text
    return name, None
