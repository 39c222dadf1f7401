"""Mixing synthetic images into training (Gowal et al., Wang et al.): opening a rank's synthetic
stream, the expected coverage of the synthetic set, the split of a global batch into real and
synthetic images per rank, and an epoch's real or mixed batches.

`state` below is the engine's TrainState (its cfg, epoch, steps and device); the engine imports
this module, so the type is not imported here.
"""

from __future__ import annotations

import math

import torch

from adr_scale.config import ConfigError, RunConfig
from adr_scale.data.datasets import ArrayDataset, DatasetInfo
from adr_scale.data.loader import real_stream_batches, train_batches
from adr_scale.data.synthetic import Batch, SyntheticLoader, SyntheticSet
from adr_scale.data.synthetic_cache import check_cache, describe_shards


def open_synthetic(cfg: RunConfig, info: DatasetInfo, rank: int = 0, world_size: int = 1, *,
                   device: torch.device | str = "cpu", check_only: bool = False):
    """The rank's SyntheticLoader for `data.synthetic` (None without), after checking the shards
    fit the dataset and the batch splits across the ranks. The first process on a node builds the
    decoded cache (the others wait for it); check_only (the Ray driver) reads the manifest and
    refuses what opening the cache here would refuse, without building it."""
    if not cfg.data.synthetic:
        return None
    _, synth_rank = mixed_batch_sizes(cfg.train.batch_size, cfg.data.synthetic_fraction, world_size)
    _, num_classes, shape = describe_shards(cfg.data.synthetic)
    expected = (info.in_channels, info.image_size, info.image_size)
    if shape != expected or num_classes != info.num_classes:
        raise ConfigError(f"data.synthetic: shards hold {num_classes}-class images of shape "
                          f"{shape}; {cfg.data.dataset} needs {info.num_classes} classes of shape "
                          f"{expected}")
    resident = cfg.data.synthetic_device == "cuda"
    if resident and torch.device(device).type != "cuda":
        raise ConfigError(f"data.synthetic_device: 'cuda' with train.device {cfg.train.device!r} "
                          f"resolved to {torch.device(device).type}; allowed: cpu, or cuda on a GPU run")
    if check_only:  # the node's cache as far as it can be judged without building it
        check_cache(cfg.data.synthetic, cfg.data.synthetic_cache, cfg.data.skip_bad_shards)
        return None
    synth = SyntheticSet(cfg.data.synthetic, cfg.data.synthetic_cache, cfg.data.skip_bad_shards,
                         tar_reader=cfg.data.tar_reader, progress=rank == 0)
    return SyntheticLoader(synth, synth_rank, seed=cfg.seed, rank=rank, device=device,
                           resident=resident)


def coverage_line(state, synthetic) -> str:
    """What share of the synthetic set this run can be expected to see (uniform draws)."""
    cfg = state.cfg
    draws = state.total_steps * round(cfg.data.synthetic_fraction * cfg.train.batch_size)
    n = len(synthetic.synth)
    return (f"synthetic: {n:,} images; {draws:,} draws in {state.total_steps:,} steps, expected "
            f"{100 * (1 - math.exp(-draws / n)):.1f} % of the images seen at least once")


def epoch_batches(state, train: ArrayDataset, synthetic, rank: int, world: int):
    """This epoch's (images, labels) on the device, real only or mixed with synthetic images."""
    cfg = state.cfg
    if synthetic is None:
        yield from train_batches(train, cfg.train.batch_size, cfg.seed, state.epoch, state.device,
                                 rank=rank, world_size=world)
        return
    real_rank, _ = mixed_batch_sizes(cfg.train.batch_size, cfg.data.synthetic_fraction, world)
    first = state.epoch * state.steps_per_epoch
    real = real_stream_batches(train, real_rank * world, cfg.seed, first, state.steps_per_epoch,
                               state.device, rank=rank, world_size=world)
    for real_batch, synth_batch in zip(real, synthetic.steps(first, state.steps_per_epoch),
                                       strict=True):
        yield concat_batches(real_batch, synth_batch)


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
