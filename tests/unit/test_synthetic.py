"""The decoded synthetic cache (real WebDataset tars), uniform draws, exact mixing; the cache built
by real processes is tests/integration/test_synthetic_processes.py."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
import torch

from adr_scale.config import ConfigError
from adr_scale.data import ArrayDataset, train_batches
from adr_scale.data.mixing import concat_batches, mixed_batch_sizes
from adr_scale.data.synthetic import SyntheticLoader, SyntheticSet
from adr_scale.data.synthetic_cache import SyntheticDataError
from data_pipeline.shard_npz import shard_npz

N, SHARD = 2000, 500  # 4 shards


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


@pytest.fixture(scope="module")
def synth(shards, tmp_path_factory):
    return SyntheticSet(shards[0], tmp_path_factory.mktemp("cache"), workers=1, progress=False)


def _index(images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B,)
    return images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()


def test_cache_holds_every_image_with_its_label(shards, synth):
    _, image = shards
    assert (len(synth), synth.num_classes, synth.image_shape) == (N, 10, (3, 8, 8))
    np.testing.assert_array_equal(synth.array(), image.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(synth.label_array(), np.arange(N) % 10)
    assert synth.bad_shards == {} and synth.built


def test_webdataset_reads_the_same_samples_as_our_parser(shards):
    """The shards are plain WebDataset tars: wds.WebDataset, and both of our readers, agree."""
    import webdataset as wds

    from adr_scale.shard_format import shard_file_samples

    urls = sorted(str(p) for p in shards[0].glob("shard-*.tar"))
    theirs = [(s["__key__"], s["png"], s["cls"]) for s in wds.WebDataset(urls, shardshuffle=False)]
    ours = [(s["__key__"], s["png"], s["cls"]) for u in urls for s in shard_file_samples(u, "fast")]
    lib = [(s["__key__"], s["png"], s["cls"]) for u in urls
           for s in shard_file_samples(u, "webdataset")]
    assert len(ours) == N and theirs == ours == lib


def test_every_image_is_drawn_and_draws_are_uniform(synth):
    """8 ranks x 100 steps x 50 images = 40,000 draws, 20 per image on average."""
    from scipy.stats import chi2

    counts = np.zeros(N, np.int64)
    for step, rank in itertools.product(range(100), range(8)):
        images, labels = synth.batch(step, 50, seed=0, rank=rank)
        idx = _index(images)
        assert torch.equal(labels, idx % 10)  # images stay with their labels
        counts += np.bincount(idx.numpy(), minlength=N)
    assert counts.sum() == 40_000 and counts.min() > 0  # every image drawn at least once
    expected = counts.sum() / N
    statistic = ((counts - expected) ** 2 / expected).sum()
    # Pearson's chi-square, N - 1 degrees of freedom: reject uniformity at p < 0.001 (fixed seed)
    assert chi2.sf(statistic, N - 1) > 1e-3, statistic


def test_a_batch_depends_only_on_seed_step_rank(shards, synth):
    a = synth.batch(7, 32, seed=3, rank=1)
    again = SyntheticSet(shards[0], synth.root, progress=False).batch(7, 32, seed=3, rank=1)
    assert not SyntheticSet(shards[0], synth.root, progress=False).built  # a restart maps it
    assert torch.equal(a[0], again[0]) and torch.equal(a[1], again[1])
    for other in ((8, 3, 1), (7, 4, 1), (7, 3, 0)):
        step, seed, rank = other
        assert not torch.equal(synth.batch(step, 32, seed=seed, rank=rank)[0], a[0]), other


@pytest.mark.parametrize("resident", [False, True])
def test_loader_yields_the_batches_and_counts_distinct_images_across_a_resume(synth, resident):
    loader = SyntheticLoader(synth, 40, seed=5, rank=2, resident=resident)
    got = list(loader.steps(0, 3)) + list(loader.steps(3, 3))  # two "epochs"
    for step, (images, labels) in enumerate(got):
        ref = synth.batch(step, 40, seed=5, rank=2)
        assert torch.equal(images, ref[0]) and torch.equal(labels, ref[1])
    drawn = torch.cat([_index(x) for x, _ in got])
    assert loader.distinct_seen == len(set(drawn.tolist())) > 200
    resumed = SyntheticLoader(synth, 40, seed=5, rank=2, resident=resident)
    list(itertools.islice(resumed.steps(4, 2), 2))  # a run resumed at step 4 replays steps 0-3
    assert resumed.distinct_seen == loader.distinct_seen


def test_resident_copy_goes_a_slice_at_a_time_and_is_exact(synth):
    from adr_scale.data.synthetic import _to_device_in_chunks

    copied = _to_device_in_chunks(synth.array(), torch.device("cpu"), chunk_bytes=1000)  # 6 rows
    assert torch.equal(copied, torch.from_numpy(synth.array().copy()))


def test_cache_is_rebuilt_after_the_manifest_changes(shards, synth, tmp_path):
    from data_pipeline.shards import read_manifest, write_manifest

    copy = tmp_path / "shards"
    shutil.copytree(shards[0], copy)
    manifest = read_manifest(copy)
    del manifest.rows["shard-000003.tar"]  # the set now holds 3 shards
    write_manifest(copy, manifest)
    smaller = SyntheticSet(copy, synth.root, workers=1, progress=False)
    assert smaller.built and smaller.cache_path != synth.cache_path and len(smaller) == 1500
    np.testing.assert_array_equal(smaller.array(), synth.array()[:1500])


def test_a_truncated_cache_is_named_in_one_line_and_rebuilt(shards, tmp_path, capsys):
    first = SyntheticSet(shards[0], tmp_path, workers=1, progress=False)
    reference = first.array().copy()
    del first
    images = next(tmp_path.glob("*/images.u8"))
    with open(images, "rb+") as f:
        f.truncate(1000)
    again = SyntheticSet(shards[0], tmp_path, workers=1, progress=False)
    lines = [x for x in capsys.readouterr().err.splitlines() if "synthetic cache" in x]
    assert len(lines) == 1 and "images.u8 holds 1000 bytes" in lines[0] and "rebuilding" in lines[0]
    assert again.built
    np.testing.assert_array_equal(again.array(), reference)


def test_a_flipped_byte_stops_the_build_naming_the_shard_or_is_left_out(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards[0], copy)
    bad = copy / "shard-000002.tar"
    data = bytearray(bad.read_bytes())
    data[5000] ^= 0x01  # one bit inside a PNG
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(SyntheticDataError, match=r"shard-000002.tar: sha256 is .*the manifest says") as exc:
        SyntheticSet(copy, cache, workers=1, progress=False)
    assert "\n" not in str(exc.value)
    assert [p.name for p in cache.iterdir()] == [f"{p.stem}.lock" for p in cache.glob("*.lock")]
    (copy / "shard-000001.tar").write_bytes(b"x" * 300)  # truncated inside its first member
    skipped = SyntheticSet(copy, cache, skip_bad=True, workers=1, progress=False)
    assert sorted(skipped.bad_shards) == ["shard-000001.tar", "shard-000002.tar"]
    assert len(skipped) == 1000
    kept = _index(torch.from_numpy(skipped.array().copy()))
    assert kept.tolist() == list(range(500)) + list(range(1500, 2000))
    with pytest.raises(SyntheticDataError, match="shard-000001.tar"):  # not silently reused
        SyntheticSet(copy, cache, skip_bad=False, workers=1, progress=False)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_decoder_fast_path_and_libpng_fallback_agree(channels):
    import io

    from PIL import Image

    from adr_scale.shard_format import decode_png, unfilter
    from data_pipeline.shards import encode_png

    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, size=(9, 7, channels), dtype=np.uint8)
    image[:4] //= 8  # some smooth rows, some noisy ones
    buf = io.BytesIO()  # Pillow picks filters per row (Sub, Paeth, ...): the general decoder
    Image.fromarray(image[:, :, 0] if channels == 1 else image).save(buf, format="PNG")
    decoded = [decode_png(data) for data in (encode_png(image), buf.getvalue())]
    assert [type(p) for _, p in decoded] == [bytes, np.ndarray]  # ours wait for the batch
    batch = unfilter([p for _, p in decoded], (channels, 9, 7))
    for got in batch:
        np.testing.assert_array_equal(got, image.transpose(2, 0, 1))
    with pytest.raises(Exception, match="(?i)error|invalid|incorrect"):
        decode_png(encode_png(image)[:-20] + bytes(20))


def test_missing_or_corrupt_manifest_is_a_config_error(shards, tmp_path):
    with pytest.raises(ConfigError, match="data.synthetic: .* holds no manifest.parquet"):
        SyntheticSet(tmp_path, tmp_path / "cache")
    shutil.copytree(shards[0], tmp_path / "s")
    (tmp_path / "s" / "manifest.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="is not a readable manifest") as exc:
        SyntheticSet(tmp_path / "s", tmp_path / "cache")
    assert "\n" not in str(exc.value) and not (tmp_path / "cache").exists()


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
def test_every_step_on_every_rank_holds_the_exact_fraction(synth, world):
    """Real batches from the engine's loader, synthetic from the cache, per rank."""
    global_batch, fraction = 32, 0.75
    real_b, synth_b = mixed_batch_sizes(global_batch, fraction, world)
    real = ArrayDataset(torch.full((100, 3, 8, 8), 255, dtype=torch.uint8),
                        torch.zeros(100, dtype=torch.int64))
    steps = 3
    per_step = [[] for _ in range(steps)]
    for rank in range(world):
        loader = SyntheticLoader(synth, synth_b, seed=0, rank=rank)
        reals = itertools.islice(train_batches(real, real_b * world, 0, 0, torch.device("cpu"),
                                               rank=rank, world_size=world), steps)
        for step, (r, s) in enumerate(zip(reals, loader.steps(0, steps), strict=True)):
            x, y = concat_batches(r, s)
            assert x.shape == (real_b + synth_b, 3, 8, 8) and y.shape == (real_b + synth_b,)
            per_step[step].append(int((x[:, 2] != 255).flatten(1).any(1).sum()))  # synthetic
    assert all(sum(counts) == round(fraction * global_batch) == 24 for counts in per_step)


def test_concat_refuses_other_shapes():
    with pytest.raises(ValueError, match="data.synthetic"):
        concat_batches((torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2)),
                       (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("resident", [False, True])
def test_pinned_and_resident_loaders_on_cuda_match_the_host_batches(synth, resident):
    """The pinned double buffer (reused only after its copy) and the GPU-resident array."""
    loader = SyntheticLoader(synth, 64, seed=1, rank=0, device="cuda", resident=resident)
    got = [(x.cpu(), y.cpu()) for x, y in loader.steps(0, 12)]  # more steps than buffers
    for step, (images, labels) in enumerate(got):
        ref = synth.batch(step, 64, seed=1, rank=0)
        assert torch.equal(images, ref[0]) and torch.equal(labels, ref[1])
