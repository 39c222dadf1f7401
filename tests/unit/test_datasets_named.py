"""SVHN, MNIST, Fashion-MNIST and STL-10 readers on tiny files written in the real formats, and
their bad-input errors (one line naming the file)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from adr_scale.config import ConfigError, DataConfig
from adr_scale.data import DATASET_INFO, load_splits
from adr_scale.data.datasets import load_arrays
from tests.conftest import one_line as _one_line

# ----------------------------------------------------------------------------------------------
# SVHN


def _svhn_mat(path: Path, images: np.ndarray, digits: np.ndarray, **override) -> None:
    """images (N, 3, 32, 32) uint8, digits 0..9; written as the .mat holds them: X (32, 32, 3, N),
    y (N, 1) with 10 for the digit 0."""
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": y} | override)


def _svhn_root(tmp_path: Path, extra: bool = False):
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 5), ("test", 3)) + ((("extra", 4),) if extra else ()):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = np.arange(n) % 10
        _svhn_mat(tmp_path / f"{split}_32x32.mat", x, y)
        out[split] = (x, y)
    return out


def test_svhn_reads_images_and_maps_label_10_to_0(tmp_path):
    data = _svhn_root(tmp_path)
    train, test = load_arrays("svhn", str(tmp_path), download=False)
    np.testing.assert_array_equal(train.images.numpy(), data["train"][0])
    np.testing.assert_array_equal(test.images.numpy(), data["test"][0])
    assert train.labels.tolist() == [0, 1, 2, 3, 4] and test.labels.tolist() == [0, 1, 2]


def test_svhn_extra_is_added_to_train_only_with_the_flag(tmp_path):
    _svhn_root(tmp_path, extra=True)
    plain = load_splits(DataConfig(dataset="svhn", root=str(tmp_path), val_size=1))
    both = load_splits(DataConfig(dataset="svhn", root=str(tmp_path), val_size=1, svhn_extra=True))
    assert len(plain.train) + len(plain.val) == 5 and len(both.train) + len(both.val) == 9
    assert len(both.test) == 3 and both.info == DATASET_INFO["svhn"]
    assert both.info.num_classes == 10 and both.info.image_size == 32


@pytest.mark.parametrize("bad, expected", [
    ({"X": np.zeros((32, 32, 3, 2), np.float32)}, "expected uint8 (32, 32, 3, N)"),
    ({"X": np.zeros((28, 28, 3, 2), np.uint8)}, "expected uint8 (32, 32, 3, N)"),
    ({"y": np.array([[1], [2], [3]], np.uint8)}, "expected (2, 1)"),
    ({"y": np.array([[0], [3]], np.uint8)}, "has label 0; allowed: 1 to 10"),
    ({"y": np.array([[11], [3]], np.uint8)}, "has label 11; allowed: 1 to 10"),
])
def test_svhn_bad_mat_is_one_line_naming_the_file(tmp_path, bad, expected):
    _svhn_root(tmp_path)
    good = {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [2]], np.uint8)}
    scipy.io.savemat(tmp_path / "test_32x32.mat", good | bad)
    with pytest.raises(ConfigError) as exc:
        load_splits(DataConfig(dataset="svhn", root=str(tmp_path), val_size=1))
    _one_line(exc, "data.root", "test_32x32.mat", expected)


def test_svhn_wrong_keys_and_not_a_mat_file(tmp_path):
    _svhn_root(tmp_path)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"images": np.zeros((2, 2), np.uint8)})
    with pytest.raises(ValueError) as exc:
        load_arrays("svhn", str(tmp_path), download=False)
    _one_line(exc, "lacks the keys 'X' and 'y'", "found images")
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError) as exc:
        load_arrays("svhn", str(tmp_path), download=False)
    _one_line(exc, "test_32x32.mat", "not a readable .mat file")


def test_missing_svhn_names_the_file_and_download(tmp_path):
    with pytest.raises(ValueError) as exc:
        load_arrays("svhn", str(tmp_path), download=False)
    _one_line(exc, "train_32x32.mat", "data.download=true")


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST idx files


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) \
        + array.astype(np.uint8).tobytes()


def _write_idx_set(base: Path, gz: bool, n_train: int = 6, n_test: int = 4):
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) * 3) % 10
        for kind, arr, magic in (("images-idx3", x, 2051), ("labels-idx1", y, 2049)):
            data = _idx(arr, magic)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (base / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (base / name).write_bytes(data)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("name, where, gz", [
    ("mnist", "", False), ("mnist", "MNIST/raw", True), ("fashion_mnist", "FashionMNIST", True),
    ("fashion_mnist", "FashionMNIST/raw", False),
])
def test_idx_reader_finds_torchvision_layouts_plain_or_gzipped(tmp_path, name, where, gz):
    data = _write_idx_set(tmp_path / where, gz)
    train, test = load_arrays(name, str(tmp_path), download=False)
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(train.images[:, 0].numpy(), data["train"][0])
    np.testing.assert_array_equal(test.labels.numpy(), data["t10k"][1])
    info = DATASET_INFO[name]
    assert (info.in_channels, info.image_size, info.num_classes) == (1, 28, 10)


def test_idx_header_that_does_not_match_its_length_is_one_line(tmp_path):
    _write_idx_set(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])  # a truncated download
    with pytest.raises(ValueError) as exc:
        load_arrays("mnist", str(tmp_path), download=False)
    _one_line(exc, str(f), "[6, 28, 28] (4720 bytes)", "holds 4620 bytes")  # 16 + 6 * 784


def test_idx_wrong_magic_and_count_mismatch_and_labels(tmp_path):
    _write_idx_set(tmp_path, gz=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx(np.zeros((4, 28, 28)), 2051)))
    with pytest.raises(ValueError) as exc:
        load_arrays("mnist", str(tmp_path), download=False)
    _one_line(exc, str(labels), "idx magic 2051; expected 2049")
    labels.write_bytes(gzip.compress(_idx(np.zeros(3), 2049)))
    with pytest.raises(ValueError) as exc:
        load_arrays("mnist", str(tmp_path), download=False)
    _one_line(exc, "(4, 28, 28) images", "(3,) labels")
    labels.write_bytes(gzip.compress(_idx(np.array([1, 2, 12, 0]), 2049)))
    with pytest.raises(ValueError) as exc:
        load_arrays("mnist", str(tmp_path), download=False)
    _one_line(exc, str(labels), "label 12; allowed: 0 to 9")


def test_missing_idx_files_name_the_places_looked_in(tmp_path):
    with pytest.raises(ValueError) as exc:
        load_arrays("fashion_mnist", str(tmp_path), download=False)
    _one_line(exc, "FashionMNIST/raw", "train-images-idx3-ubyte", "data.download=true")


# ----------------------------------------------------------------------------------------------
# STL-10 binary


def _stl_bytes(images: np.ndarray) -> bytes:
    """(N, 3, 96, 96) as STL-10 stores it: per image, channel by channel, each column-major."""
    return b"".join(img[c].tobytes(order="F") for img in images for c in range(3))


def test_stl10_reads_column_major_images_and_labels_1_to_10(tmp_path):
    base = tmp_path / "stl10_binary"
    base.mkdir()
    rng = np.random.default_rng(2)
    data = {}
    for split, n in (("train", 3), ("test", 2)):
        x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        y = np.arange(1, n + 1, dtype=np.uint8) * 3 % 10 + 1  # 1..10
        (base / f"{split}_X.bin").write_bytes(_stl_bytes(x))
        (base / f"{split}_y.bin").write_bytes(y.tobytes())
        data[split] = (x, y)
    splits = load_splits(DataConfig(dataset="stl10", root=str(tmp_path), val_size=1))
    train, test = load_arrays("stl10", str(tmp_path), download=False)
    np.testing.assert_array_equal(train.images.numpy(), data["train"][0])
    np.testing.assert_array_equal(test.labels.numpy(), data["test"][1].astype(np.int64) - 1)
    assert splits.info.image_size == 96 and splits.test.images.shape == (2, 3, 96, 96)
    (base / "test_y.bin").write_bytes(bytes([1, 2, 3]))
    with pytest.raises(ValueError) as exc:
        load_arrays("stl10", str(tmp_path), download=False)
    _one_line(exc, "test_X.bin", "3 labels", "27648 bytes (3x96x96) per label")
    (base / "test_y.bin").write_bytes(bytes([0, 2]))
    with pytest.raises(ValueError) as exc:
        load_arrays("stl10", str(tmp_path), download=False)
    _one_line(exc, "test_y.bin", "label 0; allowed: 1 to 10")


def test_download_offline_is_one_line(tmp_path, monkeypatch):
    """torchvision's fetch failing as it does offline (URLError is an OSError)."""
    import torchvision.datasets as tv

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tv, "SVHN", offline)
    with pytest.raises(ValueError) as exc:
        load_arrays("svhn", str(tmp_path), download=True)
    _one_line(exc, "data.download: could not fetch SVHN", "name resolution")


# ----------------------------------------------------------------------------------------------
# Declared statistics and the SVHN presets


def test_tinyimagenet_uses_the_official_normalisation():
    """yuyuwu5/ADR src/model/create_model.py: TINY_IMAGENET_MEAN / TINY_IMAGENET_STD."""
    info = DATASET_INFO["tinyimagenet200"]
    assert info.mean == (0.4802, 0.4481, 0.3975) and info.std == (0.2302, 0.2265, 0.2262)
    for name, info in DATASET_INFO.items():
        assert len(info.mean) == len(info.std) == info.in_channels, name


def test_svhn_presets_follow_the_svhn_recipe():
    from adr_scale.config import PRESETS, get_preset, preset_doc

    names = sorted(n for n in PRESETS if n.startswith("svhn_"))
    assert len(names) == 8 and "svhn_resnet18_at_wa_awp_adr" in names
    for name in names:
        cfg = get_preset(name)
        assert (cfg.data.dataset, cfg.optim.lr, cfg.data.flip, cfg.train.epochs) == (
            "svhn", 0.01, False, 200), name
        assert cfg.adr.enabled == name.endswith("_adr") and cfg.awp.enabled == ("_awp" in name)
        assert cfg.optim.nesterov == (not cfg.awp.enabled) and cfg.train.wa == ("_wa" in name)
        assert "Rice et al. 2020" in preset_doc(name)
