"""Dataset loaders against tiny datasets written in the real on-disk formats."""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits as sk_load_digits

from adr_scale.data.datasets import (
    DATASET_INFO,
    ArrayDataset,
    load_arrays,
    load_cifar,
    load_digits,
    load_tinyimagenet,
)

# ----------------------------------------------------------------------------------------------
# CIFAR


def _cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)  # (N, C, H, W)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """The CIFAR row format spelled out: 1024 red bytes (row-major), then green, then blue."""
    rows = []
    for img in images:
        rows.append(np.concatenate([img[c].ravel(order="C") for c in range(3)]))
    return np.stack(rows)  # (N, 3072)


def _write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    base = root / "cifar-10-batches-py"
    train_x, train_y = [], []
    for i in range(1, 6):
        x, y = _cifar_images(rng, 2), [(2 * i) % 10, (2 * i + 1) % 10]
        _write_pickle(
            base / f"data_batch_{i}",
            {b"batch_label": b"x", b"labels": y, b"data": _cifar_rows(x), b"filenames": []},
        )
        train_x.append(x)
        train_y += y
    test_x, test_y = _cifar_images(rng, 3), [7, 0, 3]
    _write_pickle(base / "test_batch", {b"labels": test_y, b"data": _cifar_rows(test_x)})
    _write_pickle(base / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    return np.concatenate(train_x), np.asarray(train_y), test_x, np.asarray(test_y)


def _write_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    base = root / "cifar-100-python"
    train_x, train_y = _cifar_images(rng, 4), [99, 0, 57, 12]
    test_x, test_y = _cifar_images(rng, 2), [5, 98]
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        coarse = [v // 5 for v in y]
        _write_pickle(
            base / name,
            {b"fine_labels": y, b"coarse_labels": coarse, b"data": _cifar_rows(x)},
        )
    _write_pickle(base / "meta", {b"fine_label_names": [], b"coarse_label_names": []})
    return train_x, np.asarray(train_y), test_x, np.asarray(test_y)


def _assert_equal(ds: ArrayDataset, images: np.ndarray, labels: np.ndarray) -> None:
    assert ds.images.dtype == torch.uint8 and ds.images.is_contiguous()
    assert ds.labels.dtype == torch.int64
    assert len(ds) == len(labels)
    np.testing.assert_array_equal(ds.images.numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)


def test_cifar10_reads_every_pixel_and_label(tmp_path: Path) -> None:
    train_x, train_y, test_x, test_y = _write_cifar10(tmp_path)
    train, test = load_cifar(str(tmp_path), 10)
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    _assert_equal(train, train_x, train_y)
    _assert_equal(test, test_x, test_y)


def test_cifar_rows_are_channel_major(tmp_path: Path) -> None:
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, 0] = 11  # red, y=0, x=0
    row[0, 1] = 12  # red, y=0, x=1
    row[0, 32] = 13  # red, y=1, x=0
    row[0, 1024] = 21  # green, y=0, x=0
    row[0, 2048 + 31 * 32 + 31] = 31  # blue, y=31, x=31
    base = tmp_path / "cifar-100-python"
    for name in ("train", "test"):
        _write_pickle(base / name, {b"fine_labels": [4], b"data": row})
    train, _ = load_cifar(str(tmp_path), 100)
    img = train.images[0]
    assert (img[0, 0, 0], img[0, 0, 1], img[0, 1, 0]) == (11, 12, 13)
    assert img[1, 0, 0] == 21 and img[2, 31, 31] == 31
    assert int(img.sum()) == 11 + 12 + 13 + 21 + 31


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    train_x, train_y, test_x, test_y = _write_cifar100(tmp_path)
    train, test = load_arrays("cifar100", str(tmp_path), download=False)
    _assert_equal(train, train_x, train_y)
    _assert_equal(test, test_x, test_y)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_missing_root_is_a_one_line_error(tmp_path: Path, num_classes: int) -> None:
    root = str(tmp_path / "nowhere")
    with pytest.raises(ValueError) as info:
        load_cifar(root, num_classes)
    msg = str(info.value)
    assert "\n" not in msg
    assert "data.root" in msg and root in msg and f"CIFAR-{num_classes}" in msg
    assert "data.download=true" in msg


def test_cifar_rejects_other_class_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        load_cifar(str(tmp_path), 20)


def test_cifar_download_fetches_only_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_cifar10(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        _write_cifar10(Path(root))  # stands in for the real download

    # A stand-in torchvision: no network, and none of the real one's seconds-long import.
    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(CIFAR10=fake_cifar10)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    train, test = load_cifar(str(tmp_path), 10, download=True)
    assert calls == [(str(tmp_path), True, True)]
    assert (len(train), len(test)) == (10, 3)
    # Files now present (with md5 sums torchvision would reject): read them, fetch nothing.
    load_cifar(str(tmp_path), 10, download=True)
    assert len(calls) == 1


# ----------------------------------------------------------------------------------------------
# TinyImageNet

_WNIDS = ["n03", "n01", "n02"]  # deliberately unsorted: class index follows sorted order
_COLOURS = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200)}
_VAL = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n03"), ("val_2.JPEG", "n01")]


def _save_jpeg(path: Path, colour: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), colour).convert(mode).save(path, "JPEG", quality=95)


def _write_tinyimagenet(base: Path) -> None:
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(_WNIDS) + "\n")
    for wnid in _WNIDS:
        for i in range(2):
            _save_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", _COLOURS[wnid])
    lines = []
    for name, wnid in _VAL:
        _save_jpeg(base / "val" / "images" / name, _COLOURS[wnid])
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def _assert_colours(ds: ArrayDataset) -> None:
    colours = torch.tensor([_COLOURS[w] for w in sorted(_WNIDS)], dtype=torch.float32)  # (K, 3)
    expected = colours[ds.labels][:, :, None, None]  # (N, 3, 1, 1)
    assert (ds.images.float() - expected).abs().max() <= 4  # JPEG is lossy


@pytest.mark.parametrize("nested", [True, False])
def test_tinyimagenet_labels_shapes_and_pixels(tmp_path: Path, nested: bool) -> None:
    _write_tinyimagenet(tmp_path / "tiny-imagenet-200" if nested else tmp_path)
    train, test = load_tinyimagenet(str(tmp_path))
    assert train.images.shape == (6, 3, 64, 64) and test.images.shape == (3, 3, 64, 64)
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]  # n01, n02, n03
    assert test.labels.tolist() == [1, 2, 0]  # annotation order: n02, n03, n01
    _assert_colours(train)
    _assert_colours(test)


def test_tinyimagenet_converts_grey_to_rgb(tmp_path: Path) -> None:
    _write_tinyimagenet(tmp_path)
    _save_jpeg(tmp_path / "train" / "n01" / "images" / "n01_0.JPEG", (90, 90, 90), mode="L")
    train, _ = load_tinyimagenet(str(tmp_path))
    grey = train.images[0].float()  # (3, 64, 64)
    assert (grey - 90).abs().max() <= 4


def test_tinyimagenet_cache_is_written_atomically_and_reused(tmp_path: Path) -> None:
    _write_tinyimagenet(tmp_path)
    first_train, first_test = load_tinyimagenet(str(tmp_path))
    cache = tmp_path / ".adr_scale_cache_v1.npz"
    assert cache.is_file()
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    # Without re-decoding the second load never opens the JPEGs.
    (tmp_path / "train" / "n02" / "images" / "n02_1.JPEG").unlink()
    second_train, second_test = load_tinyimagenet(str(tmp_path))
    assert torch.equal(second_train.images, first_train.images)
    assert torch.equal(second_train.labels, first_train.labels)
    assert torch.equal(second_test.images, first_test.images)


def test_tinyimagenet_stale_cache_is_rebuilt(tmp_path: Path) -> None:
    _write_tinyimagenet(tmp_path)
    load_tinyimagenet(str(tmp_path))
    annotations = tmp_path / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn03\t0\t0\t63\t63\n")  # relabel, drop two
    future = (tmp_path / ".adr_scale_cache_v1.npz").stat().st_mtime + 10
    os.utime(annotations, (future, future))
    _, test = load_tinyimagenet(str(tmp_path))
    assert test.labels.tolist() == [2]


def test_tinyimagenet_rejects_other_sizes(tmp_path: Path) -> None:
    _write_tinyimagenet(tmp_path)
    bad = tmp_path / "val" / "images" / "val_1.JPEG"
    Image.new("RGB", (32, 48), (0, 0, 0)).save(bad, "JPEG")
    with pytest.raises(ValueError) as info:
        load_tinyimagenet(str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and "32x48" in msg
    assert not (tmp_path / ".adr_scale_cache_v1.npz").exists()


def test_tinyimagenet_missing_root_is_a_one_line_error(tmp_path: Path) -> None:
    root = str(tmp_path / "nowhere")
    with pytest.raises(ValueError) as info:
        load_arrays("tinyimagenet200", root, download=False)
    msg = str(info.value)
    assert "\n" not in msg and "data.root" in msg and root in msg and "wnids.txt" in msg


# ----------------------------------------------------------------------------------------------
# digits and the registry


def test_digits_split_sizes_types_and_range() -> None:
    train, test = load_digits()
    assert train.images.shape == (1500, 1, 8, 8) and test.images.shape == (297, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.is_contiguous() and test.images.is_contiguous()
    both = torch.cat([train.images, test.images])
    assert int(both.min()) == 0 and int(both.max()) == 255
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(both.unique().tolist()) <= allowed
    assert set(train.labels.tolist()) == set(range(10))


def test_digits_split_is_fixed_and_disjoint() -> None:
    train, test = load_digits()
    again_train, again_test = load_digits()
    assert torch.equal(train.images, again_train.images)
    assert torch.equal(test.labels, again_test.labels)
    # test then train is exactly one permutation of all 1797 images: disjoint and complete.
    bunch = sk_load_digits()
    order = np.random.default_rng(0).permutation(1797)
    full = np.round(bunch.data * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8)
    np.testing.assert_array_equal(torch.cat([test.images, train.images]).numpy(), full[order])
    np.testing.assert_array_equal(
        torch.cat([test.labels, train.labels]).numpy(), bunch.target[order]
    )


def test_digits_mean_and_std_match_the_data() -> None:
    train, test = load_digits()
    x = torch.cat([train.images, test.images]).double() / 255
    info = DATASET_INFO["digits"]
    assert info.mean == (round(float(x.mean()), 4),)
    assert info.std == (round(float(x.std(unbiased=False)), 4),)


def test_dataset_info_agrees_with_loaders() -> None:
    assert set(DATASET_INFO) == {"cifar10", "cifar100", "tinyimagenet200", "digits", "svhn",
                                 "mnist", "fashion_mnist", "stl10"}
    for info in DATASET_INFO.values():
        assert len(info.mean) == len(info.std) == info.in_channels
    train, _ = load_arrays("digits", "unused", download=False)
    info = DATASET_INFO["digits"]
    assert train.images.shape[1:] == (info.in_channels, info.image_size, info.image_size)
    assert int(train.labels.max()) + 1 == info.num_classes


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        load_arrays("x", "unused", download=False)
    assert str(info.value) == (
        "data.dataset: unknown dataset 'x'; allowed: cifar10, cifar100, digits, fashion_mnist, "
        "mnist, stl10, svhn, tinyimagenet200"
    )


def test_digits_read_from_the_bundled_file_equal_scikit_learns_loader(monkeypatch) -> None:
    """The file read without importing scikit-learn, and its loader (used where the file is not
    found), give the same values and labels."""
    from adr_scale.data import datasets

    values, target = datasets._sklearn_digits()
    bunch = sk_load_digits()
    np.testing.assert_array_equal(values, bunch.data)
    np.testing.assert_array_equal(target, bunch.target)
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    fallback = datasets._sklearn_digits()
    np.testing.assert_array_equal(fallback[0], bunch.data)
    np.testing.assert_array_equal(fallback[1], bunch.target)
