"""Training on real + synthetic shards: exact fractions per rank, CIFAR-equivalent epochs, counts."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adr_scale.config import ConfigError, apply_overrides, get_preset
from adr_scale.data import load_splits
from adr_scale.data.mixing import epoch_batches, open_synthetic
from adr_scale.drivers import fit
from adr_scale.engine import build_state
from data_pipeline.shard_npz import shard_npz

pytestmark = pytest.mark.usefixtures("no_run_plots")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """400 digits-shaped images (1x8x8, classes 0-9) in 4 real WebDataset shards."""
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("synthetic")
    npz = base / "ddpm.npz"
    np.savez(npz, image=rng.integers(0, 256, (400, 8, 8, 1), dtype=np.uint8),
             label=np.arange(400) % 10)
    shard_npz(str(npz), base / "shards", 100, progress=False)
    return base / "shards"


def _cfg(shards, *extra):
    cache = Path(shards).parent / "cache"  # not the shared default under the system temp dir
    return apply_overrides(get_preset("smoke"), ["train.device=cpu", f"data.synthetic={shards}",
                                                 f"data.synthetic_cache={cache}",
                                                 "data.synthetic_fraction=0.75", *extra])


@pytest.mark.parametrize("world", [1, 2])
def test_every_batch_on_every_rank_holds_the_exact_fraction(shards, world):
    cfg = _cfg(shards)
    splits = load_splits(cfg.data)
    state = build_state(cfg, splits.info, len(splits.train), torch.device("cpu"))
    assert state.steps_per_epoch == -(-1200 // 64)  # ceil(N_real / global batch) = 19
    seen_real = []
    for rank in range(world):
        stream = open_synthetic(cfg, splits.info, rank, world)
        batches = list(epoch_batches(state, splits.train, stream, rank, world))
        assert len(batches) == 19
        for images, labels in batches:
            assert images.shape == (64 // world, 1, 8, 8) and labels.shape == (64 // world,)
        # the first 16 / world rows are real images, the next 48 / world synthetic
        real = torch.cat([b[0][: 16 // world] for b in batches])
        seen_real.append(real.flatten(1))
    if world == 2:  # the two ranks' real halves never overlap within a step
        a, b = seen_real
        assert not any(torch.equal(a[i], b[i]) for i in range(len(a)))


def test_mixed_fit_counts_samples_and_resumes(shards, tmp_path):
    # PGD-2 in training and validation: the sample counts and the resume do not depend on it
    cfg = _cfg(shards, "train.epochs=2", "attack.steps=2", "attack.eval_steps=2")
    summary = fit(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 38
    for row in rows:
        assert (row["samples_real"], row["samples_synthetic"]) == (19 * 16, 19 * 48)
        assert row["synthetic_bad_shards"] == 0 and row["synthetic_images"] == 400
    # distinct images after 912 and 1824 uniform draws from 400: 1 - exp(-draws / 400) expected
    seen = [row["synthetic_distinct_seen"] for row in rows]
    assert 0.85 * 400 < seen[0] < seen[1] <= 400
    fit(cfg, tmp_path / "cut", until_epoch=1, progress=False)
    fit(cfg, tmp_path / "cut", progress=False)
    again = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    drop = ("seconds", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows]


def test_mismatched_or_missing_shards_are_refused(shards, tmp_path):
    splits = load_splits(_cfg(shards).data)
    with pytest.raises(ConfigError, match="data.synthetic: .* holds no manifest.parquet"):
        open_synthetic(_cfg(tmp_path), splits.info)
    with pytest.raises(ConfigError, match="data.synthetic_fraction"):
        open_synthetic(_cfg(shards, "data.synthetic_fraction=0.7"), splits.info, 0, 2)
    cifar = load_splits(apply_overrides(get_preset("smoke"), []).data).info
    wrong = type(cifar)(num_classes=10, in_channels=3, image_size=32, mean=(0.5,) * 3,
                        std=(0.5,) * 3)
    with pytest.raises(ConfigError, match=r"shards hold 10-class images of shape \(1, 8, 8\)"):
        open_synthetic(_cfg(shards), wrong)
