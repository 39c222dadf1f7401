"""Synthetic images for training: a decoded cache of a shard directory, memory-mapped by every rank
of a node, drawn uniformly with replacement by a stateless generator per (seed, step, rank).

API (everything else in this file is private):

    synth = SyntheticSet(directory, cache_dir=None, skip_bad=False)   # builds the cache on first use
    len(synth), synth.num_classes, synth.image_shape        # N, K, (C, H, W)
    synth.bad_shards    # {shard name: why} left out of the cache (only with skip_bad=True)
    images, labels = synth.batch(step, per_rank, seed=seed, rank=rank)  # uint8 (b, C, H, W), int64 (b,)

    loader = SyntheticLoader(synth, per_rank, seed=seed, rank=rank, device=device)
    for images, labels in loader.steps(first_step, num_steps): ...  # on `device`, one step prefetched
    loader.distinct_seen   # distinct images this rank has drawn in steps [0, last step yielded]

The cache (building, checking, the manifest): `adr_scale.data.synthetic_cache`. Mixing real and
synthetic batches (`mixed_batch_sizes`, `concat_batches`): `adr_scale.data.mixing`.

Memory. Every rank maps the same file read-only, so the OS page cache holds one copy per node (3.1
GB for 1M CIFAR images) rather than one per process. SyntheticLoader(..., resident=True) copies the
whole array to the device instead (data.synthetic_device=cuda: 3.1 GB per GPU, no host work).

Sampling (Gowal et al. 2021; Wang et al. 2023): at step k rank r draws its indices uniformly with
replacement from [0, N) with a generator seeded by (seed, k, r). There is no reader state: a
resumed run replays the same images from any step, ranks are independent, every image has the
same chance at every draw; after D draws the expected share of distinct images is 1 - exp(-D/N).
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from adr_scale.data.synthetic_cache import SyntheticCache

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 (B, C, H, W), int64 (B,)

_SALT = 0x5EED_ADC5  # keeps these draws apart from any other use of (seed, step, rank)


class SyntheticSet(SyntheticCache):
    """The decoded, memory-mapped images of a shard directory; see the module docstring."""

    def __init__(self, directory: str | Path, cache_dir: str | Path | None = None,
                 skip_bad: bool = False, *, tar_reader: str = "webdataset",
                 workers: int | None = None, progress: bool = True) -> None:
        super().__init__(directory, cache_dir, skip_bad)
        self._open(tar_reader, workers, progress)

    def __len__(self) -> int:
        return self._n

    # -- opening --------------------------------------------------------------------------------

    def _open(self, tar_reader: str, workers: int | None, progress: bool) -> None:
        self._ensure_built(tar_reader, workers, progress)
        meta = json.loads((self.cache_path / "meta.json").read_text())
        self.bad_shards: dict[str, str] = dict(meta["bad_shards"])
        self._n = int(meta["num_images"])
        with open(self.cache_path / "images.u8", "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._images = np.frombuffer(self._map, np.uint8).reshape(self._n, *self.image_shape)
        self._labels = np.fromfile(self.cache_path / "labels.i64", np.int64)

    # -- drawing --------------------------------------------------------------------------------

    def indices(self, step: int, count: int, *, seed: int, rank: int) -> np.ndarray:
        """Rank `rank`'s `count` draws at step `step`: int64 in [0, N), uniform, with replacement."""
        key = np.random.SeedSequence((_SALT, seed % 2**64, step, rank))
        return np.random.Generator(np.random.PCG64(key)).integers(0, self._n, count, dtype=np.int64)

    def gather(self, idx: np.ndarray, images_out: np.ndarray | None = None,
               labels_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Images (b, C, H, W) and labels (b,) at `idx`, copied from the mapped file (into the
        given arrays, e.g. views of pinned tensors)."""
        # mode="clip": indices are in range by construction, and "raise" would buffer `out`
        return (np.take(self._images, idx, axis=0, out=images_out, mode="clip"),
                np.take(self._labels, idx, out=labels_out, mode="clip"))

    def batch(self, step: int, per_rank: int, *, seed: int, rank: int) -> Batch:
        images, labels = self.gather(self.indices(step, per_rank, seed=seed, rank=rank))
        return torch.from_numpy(images), torch.from_numpy(labels)

    def array(self) -> np.ndarray:
        """The whole read-only mapped array, uint8 (N, C, H, W)."""
        return self._images

    def label_array(self) -> np.ndarray:
        return self._labels


class SyntheticLoader:
    """A rank's synthetic batches for consecutive steps, on its device, one step ahead.

    Mapped (default): the next step's images are gathered on a background thread (into one of two
    pinned buffers when the device is CUDA, copied with non_blocking, and a buffer is reused only
    after its copy has finished), so the host gather overlaps the device's work. Resident: the
    whole array lives on the device and a step is an index_select there.
    """

    def __init__(self, synth: SyntheticSet, per_rank: int, *, seed: int, rank: int = 0,
                 device: torch.device | str = "cpu", resident: bool = False) -> None:
        self.synth, self.per_rank, self.seed, self.rank = synth, per_rank, seed, rank
        self.device = torch.device(device)
        self._seen = np.zeros(len(synth), dtype=bool)  # images this rank has drawn (the bitmap)
        self._counted = 0  # steps [0, _counted) are in _seen
        self._resident: tuple[torch.Tensor, torch.Tensor] | None = None
        if resident:
            self._resident = (_to_device_in_chunks(synth.array(), self.device),
                              torch.from_numpy(synth.label_array()).to(self.device))
        self._pinned = self.device.type == "cuda" and not resident
        if self._pinned:
            shape = (per_rank, *synth.image_shape)
            self._buffers = [(torch.empty(shape, dtype=torch.uint8).pin_memory(),
                              torch.empty(per_rank, dtype=torch.int64).pin_memory()) for _ in range(2)]
            self._copied = [torch.cuda.Event() for _ in range(2)]

    @property
    def distinct_seen(self) -> int:
        return int(np.count_nonzero(self._seen))

    def _indices(self, step: int) -> np.ndarray:
        return self.synth.indices(step, self.per_rank, seed=self.seed, rank=self.rank)

    def _catch_up(self, step: int) -> None:
        """Count the draws of steps before `step` (a resumed run has not made them itself)."""
        for s in range(self._counted, step):
            self._seen[self._indices(s)] = True
        self._counted = max(self._counted, step)

    def _host_batch(self, step: int, slot: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        idx = self._indices(step)
        if not self._pinned:
            images, labels = self.synth.gather(idx)
            return idx, torch.from_numpy(images), torch.from_numpy(labels)
        images, labels = self._buffers[slot]
        self._copied[slot].synchronize()  # its previous copy to the device has finished
        self.synth.gather(idx, images.numpy(), labels.numpy())
        return idx, images, labels

    def _mark(self, step: int, idx: np.ndarray) -> None:
        if step == self._counted:
            self._seen[idx] = True
            self._counted += 1

    def steps(self, first: int, num: int) -> Iterator[Batch]:
        """Batches of steps first .. first + num - 1: uint8 (b, C, H, W), int64 (b,) on the device."""
        self._catch_up(first)
        if self._resident is not None:
            images, labels = self._resident
            for step in range(first, first + num):
                idx = self._indices(step)
                where = torch.from_numpy(idx).to(self.device, non_blocking=True)
                self._mark(step, idx)
                yield images.index_select(0, where), labels.index_select(0, where)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="synthetic-prefetch") as pool:
            ahead = pool.submit(self._host_batch, first, 0) if num > 0 else None
            for i in range(num):
                idx, images, labels = ahead.result()
                if i + 1 < num:
                    ahead = pool.submit(self._host_batch, first + i + 1, (i + 1) % 2)
                self._mark(first + i, idx)
                if self._pinned:
                    images = images.to(self.device, non_blocking=True)
                    labels = labels.to(self.device, non_blocking=True)
                    self._copied[i % 2].record()
                yield images, labels


def _to_device_in_chunks(array: np.ndarray, device: torch.device,
                         chunk_bytes: int = 1 << 28) -> torch.Tensor:
    """The read-only mapped array as a tensor on `device`, copied a slice at a time, so no rank
    holds a second whole copy in host memory on the way (3.1 GB for 1M CIFAR images)."""
    out = torch.empty(array.shape, dtype=torch.uint8, device=device)
    rows = max(1, chunk_bytes // max(1, array[0].nbytes))
    for start in range(0, len(array), rows):
        out[start:start + rows].copy_(torch.from_numpy(np.array(array[start:start + rows])))
    return out
