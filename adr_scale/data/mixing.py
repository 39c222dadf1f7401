"""Mixing synthetic images into training (Gowal et al., Wang et al.): opening a rank's synthetic
stream, the expected coverage of the synthetic set, and an epoch's real or mixed batches.

`state` below is the engine's TrainState (its cfg, epoch, steps and device); the engine imports
this module, so the type is not imported here.
"""

from __future__ import annotations

import math

import torch

from adr_scale.config import ConfigError, RunConfig
from adr_scale.data.datasets import ArrayDataset, DatasetInfo
from adr_scale.data.loader import real_stream_batches, train_batches
from adr_scale.data.synthetic import (
    SyntheticLoader,
    SyntheticSet,
    check_cache,
    concat_batches,
    describe_shards,
    mixed_batch_sizes,
)


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
