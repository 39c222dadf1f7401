"""The generic forms (imagefolder, npz, shards) on small sets written in the real formats: their
arrays, the imagefolder cache (rebuilt after a change, a truncated one refused), statistics equal
to NumPy's, every bad-input case, and a one-epoch run on digits written as PNGs whose checkpoint,
resume and evaluation see the same classes and statistics."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adr_scale.config import ConfigError, DataConfig, apply_overrides, get_preset
from adr_scale.data import dataset_info, load_splits, resolve_data
from adr_scale.data.generic import ImageFolderCache, channel_stats, load_generic
from tests.conftest import one_line as _one_line
from tests.conftest import write_digit_pngs


def _write_folder(root: Path, images: dict[str, dict[str, list[np.ndarray]]], ext: str = "png",
                  ) -> None:
    """images[split][class] = HWC or HW uint8 arrays, saved as root/split/class/NNN.ext."""
    for split, classes in images.items():
        for name, arrays in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, a in enumerate(arrays):
                Image.fromarray(a).save(folder / f"{i:03d}.{ext}")


def _rgb(seed: int, n: int, size: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), val_size=1,
                      cache_dir=str(root / "cache"), **kw)


@pytest.fixture
def folder(tmp_path):
    images = {"train": {"cat": _rgb(0, 3), "ant": _rgb(1, 2), "dog": _rgb(2, 2)},
              "test": {"ant": _rgb(3, 1), "dog": _rgb(4, 2)}}
    _write_folder(tmp_path, images)
    return tmp_path, images


# ----------------------------------------------------------------------------------------------
# imagefolder


def test_imagefolder_png_pixels_labels_sorted_classes_and_stats(folder):
    root, images = folder
    loaded = load_generic(_cfg(root))
    # class index = sorted folder names, files in name order within a class (torchvision's order)
    assert loaded.info.class_names == ("ant", "cat", "dog") and loaded.info.num_classes == 3
    assert loaded.train.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert loaded.test.labels.tolist() == [0, 2, 2]
    want = np.stack(images["train"]["ant"] + images["train"]["cat"] + images["train"]["dog"])
    np.testing.assert_array_equal(loaded.train.images.numpy(), want.transpose(0, 3, 1, 2))
    assert (loaded.info.in_channels, loaded.info.image_size) == (3, 8)
    x = want.astype(np.float64) / 255  # NumPy's own statistics, per channel, ddof=0
    np.testing.assert_allclose(loaded.info.mean, x.mean(axis=(0, 1, 2)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(loaded.info.std, x.std(axis=(0, 1, 2)), rtol=0, atol=1e-12)
    assert loaded.stats_computed


def test_channel_stats_equal_numpy_and_ignore_chunking():
    x = np.random.default_rng(5).integers(0, 256, (37, 1, 5, 5), dtype=np.uint8)
    mean, std = channel_stats(x, chunk=4)
    assert mean == channel_stats(x, chunk=100)[0]
    assert abs(mean[0] - (x / 255).mean()) < 1e-12 and abs(std[0] - (x / 255).std()) < 1e-12


def test_jpeg_val_split_grey_conversion_and_resizing(tmp_path):
    rng = np.random.default_rng(3)
    big = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(2)]  # 16x12
    images = {"train": {"a": big, "b": big[:1]}, "val": {"b": big[1:]}}
    _write_folder(tmp_path, images, ext="jpg")
    loaded = load_generic(_cfg(tmp_path, image_size=6, channels=1))
    assert loaded.train.images.shape == (3, 1, 6, 6) and loaded.test.images.shape == (1, 1, 6, 6)
    # torchvision's Resize(6) + CenterCrop(6), then L: the same pixels from PIL's own calls
    with Image.open(tmp_path / "val/b/000.jpg") as img:
        ref = img.convert("L").resize((8, 6), Image.BILINEAR).crop((1, 0, 7, 6))
    np.testing.assert_array_equal(loaded.test.images[0, 0].numpy(), np.asarray(ref))
    assert loaded.test.labels.tolist() == [1] and len(loaded.info.mean) == 1


def test_cache_is_reused_then_rebuilt_after_a_file_changes(folder):
    root, _ = folder
    cfg = _cfg(root)
    first = load_generic(cfg)
    caches = sorted((root / "cache").glob("imagefolder-*[!k]"))
    assert len(caches) == 1 and (caches[0] / "meta.json").is_file()
    mtime = (caches[0] / "train_images.u8").stat().st_mtime_ns
    again = load_generic(cfg)  # a hit: the same directory, nothing rewritten
    assert (caches[0] / "train_images.u8").stat().st_mtime_ns == mtime
    assert torch.equal(first.train.images, again.train.images)
    changed = root / "train/cat/001.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime whatever the clock
    rebuilt = load_generic(cfg)
    assert len(list((root / "cache").glob("imagefolder-*.lock"))) == 2  # another key, another cache
    assert int(rebuilt.train.images[3].sum()) == 0 and int(first.train.images[3].sum()) > 0


def test_truncated_cache_is_refused_in_one_line(folder):
    root, _ = folder
    load_generic(_cfg(root))
    (cache,) = [p for p in (root / "cache").iterdir() if p.is_dir()]
    f = cache / "train_images.u8"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ConfigError) as exc:
        load_generic(_cfg(root))
    _one_line(exc, "data.cache_dir", str(f), "1334 bytes, 1344 expected", "delete")


def test_cache_defaults_to_next_to_the_data(folder):
    root, _ = folder
    load_generic(DataConfig(dataset="imagefolder", root=str(root), val_size=1))
    assert len([p for p in (root / ".adr_scale_cache").iterdir() if p.is_dir()]) == 1


def test_parallel_decode_equals_in_process(folder, tmp_path_factory):
    root, _ = folder
    paths = sorted((root / "train").rglob("*.png"))
    splits = {"train": (paths, np.zeros(len(paths), np.int64)), "test": (paths[:2], np.zeros(2, np.int64))}
    kw = dict(size=8, channels=3, strict=True, skip_bad=False, task_images=2)  # 4 + 1 tasks
    one = ImageFolderCache(root, splits, cache_dir=str(tmp_path_factory.mktemp("a")), workers=1, **kw)
    two = ImageFolderCache(root, splits, cache_dir=str(tmp_path_factory.mktemp("b")), workers=2, **kw)
    a, b = one.open()[0], two.open()[0]
    assert one.built and two.built and (one.processes, two.processes) == (1, 2)
    np.testing.assert_array_equal(a["train_x"], b["train_x"])


# ----------------------------------------------------------------------------------------------
# imagefolder: bad input


def test_empty_class_folder_is_named(folder):
    root, _ = folder
    (root / "train/emu").mkdir()
    with pytest.raises(ConfigError) as exc:
        load_generic(_cfg(root))
    _one_line(exc, "data.root", str(root / "train/emu"), "holds no image")


def test_test_class_missing_from_train_is_named(folder):
    root, _ = folder
    _write_folder(root, {"test": {"bee": _rgb(9, 1)}})
    with pytest.raises(ConfigError) as exc:
        load_generic(_cfg(root))
    _one_line(exc, "class 'bee'", "test classes that train also has")


def test_corrupt_and_truncated_images_stop_or_are_skipped_and_counted(folder, capsys):
    root, _ = folder
    (root / "train/cat/000.png").write_bytes(b"not an image")
    good = (root / "train/dog/001.png").read_bytes()
    (root / "train/dog/001.png").write_bytes(good[:len(good) // 2])  # truncated
    with pytest.raises(ConfigError) as exc:
        load_generic(_cfg(root))
    _one_line(exc, "data.root: image", "cat/000.png", "(and 1 more)", "data.skip_bad_images=true")
    loaded = load_generic(_cfg(root, skip_bad_images=True))
    assert len(loaded.train) == 5 and loaded.train.labels.tolist() == [0, 0, 1, 1, 2]
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s)" in err


def test_different_sizes_need_image_size(folder):
    root, _ = folder
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "train/dog/009.png")
    with pytest.raises(ConfigError) as exc:
        load_generic(_cfg(root))
    _one_line(exc, "data.image_size", "009.png", "10x10", "8x8")
    assert load_generic(_cfg(root, image_size=8)).train.images.shape == (8, 3, 8, 8)


def test_other_class_names_than_the_runs_are_refused(folder):
    root, _ = folder
    with pytest.raises(ConfigError) as exc:
        load_generic(_cfg(root, class_names=["ant", "cat", "cow"]))
    _one_line(exc, "data.class_names", "[ant, cat, cow]", "[ant, cat, dog]")


# ----------------------------------------------------------------------------------------------
# npz


def _npz(root: Path, train_image, train_label, test_image=None, test_label=None):
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "train.npz", image=train_image, label=train_label)
    np.savez(root / "test.npz", image=train_image[:3] if test_image is None else test_image,
             label=train_label[:3] if test_label is None else test_label)


def test_npz_hwc_and_hw_images_and_their_stats(tmp_path):
    x = np.random.default_rng(6).integers(0, 256, (10, 5, 5, 3), dtype=np.uint8)
    _npz(tmp_path, x, np.arange(10) % 4)
    cfg = DataConfig(dataset="npz", root=str(tmp_path), val_size=2)
    splits = load_splits(cfg)
    assert splits.info.num_classes == 4 and splits.info.class_names == ("0", "1", "2", "3")
    assert splits.test.images.shape == (3, 3, 5, 5)
    np.testing.assert_array_equal(splits.test.images.numpy(), x[:3].transpose(0, 3, 1, 2))
    np.testing.assert_allclose(splits.info.std, (x / 255).std(axis=(0, 1, 2)), atol=1e-12)
    _npz(tmp_path / "grey", x[..., 0], np.arange(10) % 4)
    grey = load_generic(DataConfig(dataset="npz", root=str(tmp_path / "grey")))
    assert grey.train.images.shape == (10, 1, 5, 5) and grey.info.in_channels == 1


@pytest.mark.parametrize("image, label, expected", [
    (np.zeros((4, 5, 5), np.float32), np.zeros(4, np.int64), "expected uint8"),
    (np.zeros((4, 5, 5, 2), np.uint8), np.zeros(4, np.int64), "with C 1 or 3"),
    (np.zeros((4, 5, 6), np.uint8), np.zeros(4, np.int64), "expected square"),
    (np.zeros((4, 5, 5), np.uint8), np.zeros(3, np.int64), "expected integers (4,)"),
    (np.zeros((4, 5, 5), np.uint8), np.zeros(4, np.float32), "expected integers (4,)"),
    (np.zeros((4, 5, 5), np.uint8), np.array([0, -1, 0, 0]), "label -1"),
])
def test_npz_wrong_shapes_dtypes_and_labels(tmp_path, image, label, expected):
    _npz(tmp_path, image, label, np.zeros((2, 5, 5), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(ConfigError) as exc:
        load_generic(DataConfig(dataset="npz", root=str(tmp_path)))
    _one_line(exc, "data.root", "train.npz", expected)


def test_npz_wrong_keys_and_labels_beyond_the_class_names(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2))
    np.savez(tmp_path / "test.npz", image=np.zeros((2, 4, 4), np.uint8), label=np.zeros(2, int))
    with pytest.raises(ConfigError) as exc:
        load_generic(DataConfig(dataset="npz", root=str(tmp_path)))
    _one_line(exc, "lacks the keys 'image' and 'label'", "found x, y")
    _npz(tmp_path, np.zeros((4, 4, 4), np.uint8), np.array([0, 1, 2, 5]))
    with pytest.raises(ConfigError) as exc:
        load_generic(DataConfig(dataset="npz", root=str(tmp_path), class_names=["a", "b", "c"]))
    _one_line(exc, "label 5; allowed: 0 to 2")
    with pytest.raises(ConfigError) as exc:
        load_generic(DataConfig(dataset="npz", root=str(tmp_path), image_size=8))
    _one_line(exc, "data.image_size: 8", "4x4")


# ----------------------------------------------------------------------------------------------
# shards (data_pipeline's writer), read through the synthetic images' cache


def test_shards_read_through_the_synthetic_cache(tmp_path):
    from data_pipeline.shard_npz import shard_npz

    rng = np.random.default_rng(7)
    sets = {}
    for split, n in (("train", 40), ("test", 12)):
        x = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
        y = np.arange(n) % 5
        np.savez(tmp_path / f"{split}.npz", image=x, label=y)
        shard_npz(str(tmp_path / f"{split}.npz"), tmp_path / "set" / split, 16, progress=False)
        sets[split] = (x, y)
    cfg = DataConfig(dataset="shards", root=str(tmp_path / "set"), val_size=4,
                     cache_dir=str(tmp_path / "cache"))
    loaded = load_generic(cfg)
    np.testing.assert_array_equal(loaded.train.images.numpy(), sets["train"][0].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(loaded.test.labels.numpy(), sets["test"][1])
    assert loaded.info.num_classes == 5 and loaded.info.image_size == 6
    np.testing.assert_allclose(loaded.info.mean, (sets["train"][0] / 255).mean(axis=(0, 1, 2)),
                               atol=1e-12)
    assert len(list((tmp_path / "cache").glob("*/stats.json"))) == 1  # stored with the cache
    assert load_generic(cfg).info == loaded.info
    with pytest.raises(ConfigError) as exc:
        load_generic(DataConfig(dataset="shards", root=str(tmp_path / "nowhere")))
    _one_line(exc, "data.root", "manifest.parquet")


# ----------------------------------------------------------------------------------------------
# The run: config holds the resolved values; training, checkpoint, resume and evaluation agree


def test_one_epoch_on_an_imagefolder_of_digits_and_its_checkpoint(tmp_path):
    from adr_scale.checkpoint import config_of, load_checkpoint, load_network
    from adr_scale.drivers import fit
    from adr_scale.evaluate.checkpoint import load_test_set

    write_digit_pngs(tmp_path / "digits")
    cfg = apply_overrides(get_preset("smoke"), [
        "data.dataset=imagefolder", f"data.root={tmp_path / 'digits'}", "data.channels=1",
        "data.val_size=50", "train.epochs=2", "attack.steps=1", "attack.eval_steps=1"])
    summary = fit(cfg, tmp_path / "run", progress=False, until_epoch=1)
    assert summary == {}  # stopped after epoch 1 of 2
    saved = config_of(load_checkpoint(next((tmp_path / "run/checkpoints").glob("*.pt"))))
    assert saved.data.class_names == [str(d) for d in range(10)]
    assert (saved.data.channels, saved.data.image_size, len(saved.data.mean)) == (1, 8, 1)
    yaml_text = (tmp_path / "run/config.yaml").read_text()
    assert "class_names:" in yaml_text and "- '9'" in yaml_text
    # a resumed run uses its stored statistics, not those of the cache (made different here)
    meta_file = next(p for p in (tmp_path / "digits/.adr_scale_cache").iterdir()
                     if p.is_dir()) / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(meta | {"mean": [0.9], "std": [0.9]}))
    summary = fit(cfg, tmp_path / "run", progress=False)
    assert summary["final_epoch"] == 2
    assert summary["class_names"] == [str(d) for d in range(10)]  # also in summary.json
    net = load_network(tmp_path / "run/final.pt")
    head = [m for m in net.module.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert head.out_features == 10 and net.info.num_classes == 10
    assert net.info.mean == tuple(saved.data.mean) and net.info == dataset_info(net.cfg.data)
    test = load_test_set(net.cfg, None, 20)
    assert test.images.shape == (20, 1, 8, 8) and int(test.labels.max()) <= 9


def test_resolve_data_fills_only_the_missing_fields():
    cfg = apply_overrides(get_preset("smoke"), ["data.dataset=npz", "data.mean=[0.5]",
                                                "data.std=[0.25]"])
    from adr_scale.data.datasets import DatasetInfo

    info = DatasetInfo(num_classes=2, in_channels=1, image_size=4, mean=(0.1,), std=(0.2,),
                       class_names=("a", "b"))
    out = resolve_data(cfg, info).data
    assert (out.class_names, out.channels, out.image_size, out.mean, out.std) == (
        ["a", "b"], 1, 4, [0.5], [0.25])
    assert resolve_data(get_preset("smoke"), info).data.mean is None  # named: unchanged


def test_every_bundled_search_space_parses_and_the_dataset_ones_fit_their_data():
    from adr_scale.search.space import load_space

    spaces = {p.stem: load_space(p) for p in sorted(Path("search_spaces").glob("*.yaml"))}
    assert {"svhn", "custom"} <= set(spaces)
    svhn = spaces["svhn"].trial_config(spaces["svhn"].warm_start_params())
    assert (svhn.data.dataset, svhn.optim.lr, svhn.train.epochs) == ("svhn", 0.01, 40)
    custom = spaces["custom"].long_run_config(spaces["custom"].warm_start_params())
    assert (custom.data.dataset, custom.data.image_size, custom.train.epochs) == (
        "imagefolder", 32, 200)
    assert abs(custom.attack.eps - 8 / 255) < 1e-6 and abs(custom.attack.alpha - 2 / 255) < 1e-6
