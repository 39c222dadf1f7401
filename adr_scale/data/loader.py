"""Train / validation split and device-side batching with augmentation.

Whole datasets live in memory as uint8 tensors (CIFAR: 150 MB, TinyImageNet: 1.2 GB), ideally on
the accelerator: batches are gathered and augmented there with no worker processes, and the data
order of an epoch is a pure function of (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from adr_scale.config import GENERIC_DATASETS, ConfigError, DataConfig, RunConfig, from_dict
from adr_scale.data.datasets import DATASET_INFO, ArrayDataset, DatasetInfo, load_arrays


@dataclass(frozen=True)
class Splits:
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    info: DatasetInfo


def split_validation(train: ArrayDataset, val_size: int, split_seed: int,
                     train_size: int | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """Carve `val_size` images out of the training set with a fixed seed (never the test set);
    keep `train_size` of the rest (None: all), drawn with the same seed, so runs compare."""
    if val_size >= len(train):
        raise ConfigError(f"data.val_size: {val_size} leaves no training images; allowed: "
                          f"an integer in [1, {len(train) - 1}] for this dataset")
    if train_size is not None and train_size > len(train) - val_size:
        raise ConfigError(f"data.train_size: {train_size} exceeds the {len(train) - val_size} "
                          f"images left after data.val_size={val_size}; allowed: null or an "
                          f"integer in [1, {len(train) - val_size}]")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
    rest = order[val_size:] if train_size is None else order[val_size:val_size + train_size]
    val_idx, train_idx = order[:val_size].sort().values, rest.sort().values
    return (ArrayDataset(train.images[train_idx], train.labels[train_idx]),
            ArrayDataset(train.images[val_idx], train.labels[val_idx]))


def load_splits(cfg: DataConfig) -> Splits:
    """Read the dataset named by `cfg` and split it; every user error is a one-line ConfigError.

    `info` is resolved: a generic form's classes, shape and statistics come from the data (or
    from `cfg` where set: a resumed run's or a checkpoint's config); `resolve_data` writes them
    into the run's config."""
    if cfg.dataset not in DATASET_INFO and cfg.dataset not in GENERIC_DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {cfg.dataset!r}; allowed: "
                          + ", ".join(sorted([*DATASET_INFO, *GENERIC_DATASETS])))
    try:
        if cfg.dataset in GENERIC_DATASETS:
            from adr_scale.data.generic import load_generic

            loaded = load_generic(cfg)
            full_train, test, info = loaded.train, loaded.test, loaded.info
            if loaded.stats_computed:  # once per run: a resumed run reads them from its config
                print(f"{cfg.dataset} {cfg.root}: {info.num_classes} classes, "
                      f"{info.in_channels}x{info.image_size}x{info.image_size}, training split of "
                      f"{len(full_train)} images: mean {_fmt(info.mean)} std {_fmt(info.std)}",
                      file=sys.stderr, flush=True)
        else:
            full_train, test = load_arrays(cfg.dataset, cfg.root, cfg.download,
                                           svhn_extra=cfg.svhn_extra)
            info = dataset_info(cfg)
    except ConfigError:
        raise
    except ValueError as exc:  # the readers name data.root and what they expected
        raise ConfigError(str(exc)) from None
    train, val = split_validation(full_train, cfg.val_size, cfg.split_seed, cfg.train_size)
    return Splits(train=train, val=val, test=test, info=info)


RESOLVED_FIELDS = ("class_names", "channels", "image_size", "mean", "std")


def inherit_data(cfg: RunConfig, stored: dict) -> RunConfig:
    """`cfg` with the resolved data fields it leaves None taken from a stored config dict (a
    checkpoint's): a resumed run keeps the statistics and classes it started with."""
    if cfg.data.dataset not in GENERIC_DATASETS or stored.get("data", {}).get("dataset") != cfg.data.dataset:
        return cfg
    given = {k: stored["data"][k] for k in RESOLVED_FIELDS
             if getattr(cfg.data, k) is None and stored["data"].get(k) is not None}
    return from_dict({"data": given}, base=cfg, source="checkpoint config") if given else cfg


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """The DatasetInfo a network of a run with data config `cfg` is built for, without reading
    images where the config holds it: a named dataset's declaration (data.mean / data.std
    override its statistics), a generic form's resolved fields (see resolve_data); a generic
    config that was never resolved (e.g. a trial of a search) is resolved by loading the data."""
    if cfg.dataset in DATASET_INFO:
        info = DATASET_INFO[cfg.dataset]
        if cfg.mean is not None and cfg.std is not None:
            if len(cfg.mean) != info.in_channels:
                raise ConfigError(f"data.mean: {cfg.mean} has {len(cfg.mean)} values; "
                                  f"{cfg.dataset} has {info.in_channels} channels")
            info = replace(info, mean=tuple(cfg.mean), std=tuple(cfg.std))
        return info
    if None in (cfg.class_names, cfg.channels, cfg.image_size, cfg.mean, cfg.std):
        return load_splits(cfg).info
    if len(cfg.mean) != cfg.channels:
        raise ConfigError(f"data.mean: {cfg.mean} has {len(cfg.mean)} values; data.channels is "
                          f"{cfg.channels}")
    return DatasetInfo(num_classes=len(cfg.class_names), in_channels=cfg.channels,
                       image_size=cfg.image_size, mean=tuple(cfg.mean), std=tuple(cfg.std),
                       class_names=tuple(cfg.class_names))


def resolve_data(cfg: RunConfig, info: DatasetInfo) -> RunConfig:
    """`cfg` with a generic form's data fields that were None filled from `info` (the values the
    data gave), so the run's config.yaml and checkpoints carry them; a named dataset's config is
    returned unchanged (its DATASET_INFO entry is the record)."""
    d = cfg.data
    if d.dataset not in GENERIC_DATASETS:
        return cfg
    data = replace(d, class_names=d.class_names if d.class_names is not None
                   else list(info.class_names),
                   channels=d.channels or info.in_channels,
                   image_size=d.image_size or info.image_size,
                   mean=d.mean if d.mean is not None else list(info.mean),
                   std=d.std if d.std is not None else list(info.std))
    return replace(cfg, data=data)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`: depends only on (seed, epoch), so resuming replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch; the remainder (< one batch) waits for the next epoch's order."""
    return max(n // batch_size, 1)


def _on(device: torch.device, t: torch.Tensor) -> torch.Tensor:
    """An index tensor on the data's device: pinned and copied without blocking on a GPU, once
    per permutation rather than per step (indexing a GPU tensor with a host index copies the
    index synchronously)."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def train_batches(data: ArrayDataset, batch_size: int, seed: int, epoch: int,
                  device: torch.device, rank: int = 0, world_size: int = 1,
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images (b, C, H, W), labels (b,)) on `device`, b = batch_size / world_size.

    Rank r takes the r-th contiguous slice of every global batch, so the ranks' slices never overlap.
    """
    order = _on(data.images.device, epoch_permutation(len(data), seed, epoch))
    per_rank = batch_size // world_size
    n = len(order)
    for step in range(steps_per_epoch(n, batch_size)):
        idx = order[step * batch_size:(step + 1) * batch_size]
        if len(idx) < batch_size:  # fewer images than one batch: wrap around
            idx = order[torch.arange(step * batch_size, (step + 1) * batch_size,
                                     device=order.device) % n]
        idx = idx[rank * per_rank:(rank + 1) * per_rank]
        yield data.images[idx].to(device, non_blocking=True), data.labels[idx].to(device)


def real_stream_batches(data: ArrayDataset, per_global: int, seed: int, start_step: int,
                        num_steps: int, device: torch.device, rank: int = 0, world_size: int = 1,
                        ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The real part of mixed batches: step k takes positions [k * per_global, (k + 1) * per_global)
    of an endless sequence of permutations, so real images cycle at their own pace, independent
    of the (CIFAR-equivalent) epoch, and resuming at any step replays the same images. The
    permutations move to the data's device once each; a step only slices them there."""
    n = len(data)
    per_rank = per_global // world_size
    perms: dict[int, torch.Tensor] = {}
    for step in range(start_step, start_step + num_steps):
        lo, hi = step * per_global, (step + 1) * per_global  # positions [lo, hi)
        parts = []
        for block in range(lo // n, (hi - 1) // n + 1):
            if block not in perms:  # keep only the permutations still in use
                perms = {b: p for b, p in perms.items() if b >= block - 1}
                perms[block] = _on(data.images.device,
                                   epoch_permutation(n, seed, 1_000_000 + block))
            parts.append(perms[block][max(lo, block * n) - block * n:min(hi, (block + 1) * n) - block * n])
        idx = torch.cat(parts)[rank * per_rank:(rank + 1) * per_rank]
        yield data.images[idx].to(device, non_blocking=True), data.labels[idx].to(device)


def eval_batches(data: ArrayDataset, batch_size: int, device: torch.device,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        yield data.images[sl].to(device), data.labels[sl].to(device)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [0, 1] (the models normalise inside)."""
    return images.float().div_(255.0)


def augment(x: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, per image, on x's device.

    x: (B, C, H, W) float. Uses the global torch RNG of x's device (saved in checkpoints).
    """
    b, c, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
        oy = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]  # (B, C, H, W)
    if flip:
        mirror = torch.rand(b, device=x.device) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x
