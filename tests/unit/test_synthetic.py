"""The synthetic shard reader (real tar files through webdataset) and exact batch mixing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from adr_scale.config import ConfigError
from adr_scale.data import ArrayDataset, train_batches
from adr_scale.data.synthetic import (
    SyntheticDataError,
    SyntheticStream,
    concat_batches,
    mixed_batch_sizes,
)
from data_pipeline.shard_npz import shard_npz

N, SHARD = 120, 30  # 4 shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Image i carries i in its first two pixels and has label i % 10, so pairs can be checked."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(N, 8, 8, 3), dtype=np.uint8)
    index = np.arange(N)
    image[:, 0, 0, 0], image[:, 0, 0, 1] = index % 256, index // 256
    np.savez(root / "set.npz", image=image, label=index % 10)
    shard_npz(str(root / "set.npz"), root / "shards", SHARD, progress=False)
    return root / "shards", image


def _index(images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B,)
    return images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()


def _epoch(directory, epoch=0, n=5, batch=16, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    kw.setdefault("shuffle_buffer", 64)
    return list(SyntheticStream(directory, batch, **kw).epoch(epoch, n))


def test_stream_decodes_images_with_their_labels(shards):
    directory, image = shards
    stream = SyntheticStream(directory, 16, shuffle_buffer=64)
    assert (stream.num_images, stream.num_classes, stream.image_shape) == (N, 10, (3, 8, 8))
    batches = list(stream.epoch(0, 7))
    assert len(batches) == 7
    for x, y in batches:
        assert x.shape == (16, 3, 8, 8) and x.dtype == torch.uint8 and y.dtype == torch.int64
        idx = _index(x)
        assert torch.equal(y, idx % 10)
        for j, i in enumerate(idx.tolist()):  # every pixel, back in (C, H, W)
            assert torch.equal(x[j], torch.from_numpy(image[i]).permute(2, 0, 1))
    seen = torch.cat([_index(x) for x, _ in batches])
    assert len(set(seen.tolist())) > 60  # drawn from many shards, not one


def test_same_seed_epoch_rank_same_batches_else_different(shards):
    directory = shards[0]
    a, b = _epoch(directory, seed=3), _epoch(directory, seed=3)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))
    for other in (_epoch(directory, seed=4), _epoch(directory, epoch=1, seed=3),
                  _epoch(directory, seed=3, rank=1)):
        assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in other]))


def test_every_rank_yields_exactly_n_batches(shards):
    # 2 ranks x 9 batches x 16 = 288 samples from 120 images: resampling, never runs dry
    for rank in (0, 1):
        assert len(_epoch(shards[0], n=9, rank=rank)) == 9


def test_loader_workers_are_deterministic(shards):
    a = _epoch(shards[0], n=6, num_workers=2)
    b = _epoch(shards[0], n=6, num_workers=2)
    assert len(a) == 6 and all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b, strict=True))
    assert all(torch.equal(y, _index(x) % 10) for x, y in a)


def test_bad_shard_raises_naming_it_or_is_skipped_and_counted(shards, tmp_path):
    import shutil

    shutil.copytree(shards[0], tmp_path, dirs_exist_ok=True)
    bad = tmp_path / "shard-000002.tar"
    bad.write_bytes(bad.read_bytes()[:700] + b"garbage!" * 300)  # a sample, then junk
    with pytest.raises(SyntheticDataError, match="shard-000002.tar"):
        _epoch(tmp_path, n=20)
    stream = SyntheticStream(tmp_path, 16, skip_bad=True, shuffle_buffer=64)
    batches = list(stream.epoch(0, 20))
    assert len(batches) == 20 and list(stream.bad_shards) == ["shard-000002.tar"]
    assert all(torch.equal(y, _index(x) % 10) for x, y in batches)


def test_webdataset_reads_the_same_samples_as_our_parser(shards):
    """The shards are plain WebDataset tars: webdataset's own reader agrees with ours."""
    import webdataset as wds

    from adr_scale.data.synthetic import _tar_samples, _webdataset_samples

    urls = sorted(str(p) for p in shards[0].glob("shard-*.tar"))
    theirs = [(s["__key__"], s["png"], s["cls"]) for s in wds.WebDataset(urls, shardshuffle=False)]
    ours = [(s["__key__"], s["png"], s["cls"]) for u in urls for s in _tar_samples(u)]
    default = [(s["__key__"], s["png"], s["cls"]) for u in urls for s in _webdataset_samples(u)]
    assert len(ours) == N and theirs == ours == default


def test_both_tar_readers_give_the_same_batches(shards):
    from adr_scale.data.synthetic import SyntheticStream

    a = list(SyntheticStream(shards[0], 16, seed=3, tar_reader="webdataset").epoch(0, 5))
    b = list(SyntheticStream(shards[0], 16, seed=3, tar_reader="fast").epoch(0, 5))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("channels", [1, 3])
def test_png_decoder_fast_path_and_libpng_fallback_agree(channels):
    import io

    from PIL import Image

    from adr_scale.data.synthetic import _decode_png, _unfilter
    from data_pipeline.shards import encode_png

    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, size=(9, 7, channels), dtype=np.uint8)
    image[:4] //= 8  # some smooth rows, some noisy ones
    buf = io.BytesIO()  # Pillow picks filters per row (Sub, Paeth, ...): the general decoder
    Image.fromarray(image[:, :, 0] if channels == 1 else image).save(buf, format="PNG")
    decoded = [_decode_png(data) for data in (encode_png(image), buf.getvalue())]
    assert [type(p) for _, p in decoded] == [bytes, np.ndarray]  # ours wait for the batch
    batch = _unfilter([p for _, p in decoded], (channels, 9, 7))
    for got in batch:
        np.testing.assert_array_equal(got, image.transpose(2, 0, 1))
    with pytest.raises(Exception, match="(?i)error|invalid|incorrect"):
        _decode_png(encode_png(image)[:-20] + bytes(20))


def test_missing_manifest_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.synthetic"):
        SyntheticStream(tmp_path, 8)


# ---------------------------------------------------------------------------------------------
# Mixing


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_mixed_batch_sizes_exact_fraction(world):
    real, synth = mixed_batch_sizes(1024, 0.75, world)
    assert synth * world == 768 and (real + synth) * world == 1024


def test_mixed_batch_sizes_refuses_uneven_splits():
    with pytest.raises(ConfigError) as exc:
        mixed_batch_sizes(1000, 0.75, 4)  # 750 synthetic: not a multiple of 4
    message = str(exc.value)
    assert "\n" not in message and "750" in message and "250" in message and " 4 " in message
    assert mixed_batch_sizes(1000, 0.7, 4) == (75, 175)  # 700 / 300 do split
    assert mixed_batch_sizes(128, 0.0, 2) == (64, 0)


@pytest.mark.parametrize("world", [1, 2])
def test_every_step_on_every_rank_holds_the_exact_fraction(shards, world):
    """Real batches from the engine's loader, synthetic from the stream, per rank."""
    global_batch, fraction = 32, 0.75
    real_b, synth_b = mixed_batch_sizes(global_batch, fraction, world)
    real = ArrayDataset(torch.full((100, 3, 8, 8), 255, dtype=torch.uint8),
                        torch.zeros(100, dtype=torch.int64))
    steps = 3
    per_step = [[] for _ in range(steps)]
    for rank in range(world):
        stream = SyntheticStream(shards[0], synth_b, seed=0, rank=rank, shuffle_buffer=64)
        reals = itertools.islice(train_batches(real, real_b * world, 0, 0, torch.device("cpu"),
                                               rank=rank, world_size=world), steps)
        for step, (r, s) in enumerate(zip(reals, stream.epoch(0, steps), strict=True)):
            x, y = concat_batches(r, s)
            assert x.shape == (real_b + synth_b, 3, 8, 8) and y.shape == (real_b + synth_b,)
            per_step[step].append(int((x[:, 2] != 255).flatten(1).any(1).sum()))  # synthetic
    assert all(sum(counts) == round(fraction * global_batch) == 24 for counts in per_step)


def test_concat_refuses_other_shapes():
    with pytest.raises(ValueError, match="data.synthetic"):
        concat_batches((torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2)),
                       (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2)))
