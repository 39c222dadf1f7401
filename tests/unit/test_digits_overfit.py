"""The digits_overfit preset and its search space load and validate; data.train_size and the
tiny_wide network behind them (no training: benchmarks/overfit_digits.py measures)."""

import pytest
import torch

from adr_scale.config import ConfigError, apply_overrides, get_preset, validate
from adr_scale.data import ArrayDataset, split_validation
from adr_scale.models import create_model
from adr_scale.search.space import load_space

pytestmark = pytest.mark.usefixtures("no_run_plots")  # tests/unit/conftest.py

SPACE = "search_spaces/digits_overfit.yaml"


def test_preset_is_smoke_made_to_overfit():
    cfg = validate(get_preset("digits_overfit"))
    smoke = get_preset("smoke")
    assert (cfg.data.dataset, cfg.data.val_size, cfg.data.split_seed) == ("digits", 300, 0)
    assert (cfg.data.train_size, cfg.data.crop_padding, cfg.model.arch) == (300, 0, "tiny_wide")
    assert (cfg.attack.eps, cfg.attack.alpha) == pytest.approx((48 / 255, 12 / 255))
    assert (cfg.optim.schedule, cfg.train.epochs, cfg.train.batch_size) == ("piecewise", 60, 32)
    a = cfg.adr  # the paper's CIFAR-10 schedule, as in smoke
    assert a.enabled and (a.tau_start, a.tau_end, a.lambda_start, a.lambda_end) == (
        smoke.adr.tau_start, smoke.adr.tau_end, smoke.adr.lambda_start, smoke.adr.lambda_end)
    assert smoke.data.train_size is None  # smoke itself is unchanged


def test_space_loads_with_confirmation_and_full_length_long_run():
    space = load_space(SPACE)
    assert space.base == "digits_overfit"
    assert space.budget.epochs < get_preset("digits_overfit").train.epochs
    assert (space.confirm.top_k, space.confirm.seeds) == (3, 3)
    long = space.long_run_config(space.warm_start_params())
    assert long.train.epochs == 60 and long.data.train_size == 300
    assert (long.adr.tau_start, long.adr.tau_end, long.adr.lambda_start, long.adr.lambda_end) == (
        pytest.approx((2.5, 2.0, 0.7, 0.95)))
    at = space.trial_config(space.reference_points()["AT"])
    assert (at.adr.lambda_start, at.adr.lambda_end) == (0.0, 0.0)
    assert at.train.epochs == space.budget.epochs


def test_train_size_keeps_a_seeded_subset_of_the_rest():
    images = torch.arange(100, dtype=torch.uint8)[:, None, None, None].expand(100, 1, 2, 2)
    data = ArrayDataset(images.contiguous(), torch.arange(100) % 10)
    full, val = split_validation(data, 20, split_seed=0)
    some, val2 = split_validation(data, 20, split_seed=0, train_size=30)
    assert torch.equal(val.images, val2.images) and len(some) == 30
    assert set(some.images[:, 0, 0, 0].tolist()) <= set(full.images[:, 0, 0, 0].tolist())
    assert len(split_validation(data, 20, 0, train_size=80)[0]) == 80
    with pytest.raises(ConfigError, match=r"data.train_size: 81 exceeds the 80 images"):
        split_validation(data, 20, 0, train_size=81)
    with pytest.raises(ConfigError, match=r"data.train_size: invalid value 0"):
        validate(apply_overrides(get_preset("smoke"), ["data.train_size=0"]))


def test_tiny_wide_is_tiny_at_four_times_the_width():
    wide = create_model("tiny_wide", 10, in_channels=1)
    n = sum(p.numel() for p in wide.parameters())
    assert n == 9 * 64 + 2 * 64 + 64 * 9 * 128 + 2 * 128 + 128 * 4 * 10 + 10  # 79,818
    assert wide(torch.rand(2, 1, 8, 8)).shape == (2, 10)
