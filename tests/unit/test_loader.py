import pytest
import torch
import torch.nn.functional as F

from adr_scale.config import ConfigError, DataConfig
from adr_scale.data import (
    ArrayDataset,
    augment,
    epoch_permutation,
    load_splits,
    split_validation,
    steps_per_epoch,
    train_batches,
)


def _toy(n=100):
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 2, 2).contiguous()
    return ArrayDataset(images, torch.arange(n) % 10)


def test_validation_split_is_fixed_disjoint_and_complete():
    data = _toy()
    train, val = split_validation(data, 20, split_seed=0)
    train2, val2 = split_validation(data, 20, split_seed=0)
    assert torch.equal(val.images, val2.images) and len(train) == 80 and len(val) == 20
    ids = torch.cat([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]]).sort().values
    assert torch.equal(ids, torch.arange(100, dtype=torch.uint8))
    _, other = split_validation(data, 20, split_seed=1)
    assert not torch.equal(val.images, other.images)
    with pytest.raises(ConfigError, match=r"data.val_size: 100 leaves no training images"):
        split_validation(data, 100, 0)


def test_digits_splits_do_not_depend_on_the_run_seed():
    a = load_splits(DataConfig(dataset="digits", val_size=300))
    assert (len(a.train), len(a.val), len(a.test)) == (1200, 300, 297)
    assert a.info.num_classes == 10 and a.info.in_channels == 1


def test_epochs_are_permutations_that_differ_and_repeat():
    p0, p1 = epoch_permutation(50, 3, 0), epoch_permutation(50, 3, 1)
    assert torch.equal(p0.sort().values, torch.arange(50)) and not torch.equal(p0, p1)
    assert torch.equal(p0, epoch_permutation(50, 3, 0))


def test_rank_slices_partition_the_global_batch():
    data, cpu = _toy(), torch.device("cpu")
    assert steps_per_epoch(len(data), 16) == 6
    whole = list(train_batches(data, 16, seed=0, epoch=2, device=cpu))
    halves = [list(train_batches(data, 16, 0, 2, cpu, rank=r, world_size=2)) for r in (0, 1)]
    assert len(whole) == 6 and all(len(h) == 6 for h in halves)
    for step, (images, labels) in enumerate(whole):
        joined = torch.cat([halves[0][step][0], halves[1][step][0]])
        assert torch.equal(joined, images) and images.shape == (16, 1, 2, 2)
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), labels)
    seen = torch.cat([b[0][:, 0, 0, 0] for b in whole])
    assert len(seen.unique()) == 96  # no image twice within an epoch


def test_augment_crops_a_shifted_window_of_the_zero_padded_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = augment(x, padding=2, flip=False)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(64):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, x)  # some images moved


def test_augment_flips_about_half_and_keeps_values():
    torch.manual_seed(0)
    x = torch.rand(400, 1, 4, 4)
    out = augment(x, padding=0, flip=True)
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(400)]
    kept = [torch.equal(out[i], x[i]) for i in range(400)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 150 < sum(flipped) < 250
    assert torch.equal(augment(x, padding=0, flip=False), x)
