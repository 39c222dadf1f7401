"""Whole image datasets read into memory as uint8 tensors.

Every loader returns ``(train, test)`` as :class:`ArrayDataset` with images in (N, C, H, W)
uint8 layout; scaling to [0, 1] and normalisation happen later, on the device.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from adr_scale.data.arrays import ArrayDataset, DatasetInfo

DATASET_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),  # training set, the commonly used values
        std=(0.2471, 0.2435, 0.2616),
    ),
    "cifar100": DatasetInfo(
        num_classes=100,
        in_channels=3,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),  # training set, the commonly used values
        std=(0.2673, 0.2564, 0.2762),
    ),
    "tinyimagenet200": DatasetInfo(
        num_classes=200,
        in_channels=3,
        image_size=64,
        # The official ADR code's values (yuyuwu5/ADR src/model/create_model.py), which the
        # presets reproduce. This project used the also commonly cited std (0.2770, 0.2691,
        # 0.2821) before; those move the logits of the same weights by about 21 % (docs/presets.md).
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2302, 0.2265, 0.2262),
    ),
    "svhn": DatasetInfo(
        num_classes=10,
        in_channels=3,
        image_size=32,
        # Training split (73,257 images), the commonly used values (not recomputed here; DeepMind's
        # model zoo, Gowal et al. 2020, uses 0.5 / 0.5 instead).
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
    ),
    "mnist": DatasetInfo(
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(0.1307,),  # training set, the commonly used values (PyTorch's MNIST example)
        std=(0.3081,),
    ),
    "fashion_mnist": DatasetInfo(
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(0.2860,),  # training set, the commonly used values (not recomputed here)
        std=(0.3530,),
    ),
    "stl10": DatasetInfo(
        num_classes=10,
        in_channels=3,
        image_size=96,
        mean=(0.4467, 0.4398, 0.4066),  # the commonly used values (not recomputed here)
        std=(0.2603, 0.2566, 0.2713),
    ),
    "digits": DatasetInfo(
        num_classes=10,
        in_channels=1,
        image_size=8,
        # All 1797 images after the uint8 scaling of load_digits(), divided by 255:
        # np.mean(x) and np.std(x) (ddof=0) over every pixel, rounded to 4 decimals.
        mean=(0.3053,),
        std=(0.3759,),
    ),
}


def load_arrays(dataset: str, root: str, download: bool, *, svhn_extra: bool = False,
                ) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of the named dataset ``data.dataset`` (the generic forms: data.generic)."""
    from adr_scale.data import named

    if dataset == "svhn":
        return named.load_svhn(root, extra=svhn_extra, download=download)
    if dataset in ("mnist", "fashion_mnist"):
        return named.load_idx_dataset(dataset, root, download=download)
    if dataset == "stl10":
        return named.load_stl10(root, download=download)
    if dataset == "cifar10":
        return load_cifar(root, 10, download=download)
    if dataset == "cifar100":
        return load_cifar(root, 100, download=download)
    if dataset == "tinyimagenet200":
        return load_tinyimagenet(root)
    if dataset == "digits":
        return load_digits()
    allowed = ", ".join(sorted(DATASET_INFO))
    raise ValueError(f"data.dataset: unknown dataset {dataset!r}; allowed: {allowed}")


# ----------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100, torchvision's on-disk layout


_CIFAR_LAYOUT = {
    # num_classes: (folder, train files, test file, label key)
    10: (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
    ),
    100: ("cifar-100-python", ["train"], "test", "fine_labels"),
}


def load_cifar(
    root: str, num_classes: int, *, download: bool = False
) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 or CIFAR-100 from the python pickles under ``root``.

    With ``download`` torchvision fetches missing files; we still read the pickles ourselves
    (torchvision's reader insists on the official md5 sums).
    """
    if num_classes not in _CIFAR_LAYOUT:
        raise ValueError(f"num_classes: CIFAR has 10 or 100 classes, got {num_classes!r}")
    folder, train_files, test_file, label_key = _CIFAR_LAYOUT[num_classes]
    base = Path(root) / folder
    needed = [base / name for name in [*train_files, test_file]]
    if download and not all(p.is_file() for p in needed):
        from torchvision import datasets as tv_datasets  # slow import, only when fetching

        fetch = tv_datasets.CIFAR10 if num_classes == 10 else tv_datasets.CIFAR100
        try:
            fetch(root, train=True, download=True)  # one archive holds train and test
        except (OSError, RuntimeError) as exc:  # offline (URLError is an OSError), bad md5, full disk
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise ValueError(f"data.download: could not fetch CIFAR-{num_classes} into {root!r} "
                             f"({why}); download it by hand or check the network") from None
    if not all(p.is_file() for p in needed):
        raise ValueError(
            f"data.root: {root!r} holds no CIFAR-{num_classes} data (expected {needed[0]} ...); "
            "set data.download=true to fetch it"
        )
    train = _concat([_read_cifar_batch(base / name, label_key, num_classes)
                     for name in train_files])
    test = _read_cifar_batch(base / test_file, label_key, num_classes)
    return train, test


# The only globals a CIFAR batch needs: numpy's array reconstruction (numpy 1 and 2 names) and
# protocol 2's spelling of bytes. Anything else (os.system, builtins.eval, ...) is a crafted file.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, str, bytes, ints and numpy arrays only: a dataset directory is
    data, and a pickle from it must never run code (pickle.load would call any global)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _unpickle_cifar(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # latin1 reads the official Python 2 pickles (str keys) and Python 3 ones (bytes keys)
            raw = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError) as exc:
        raise ValueError(f"data.root: {str(path)!r} is not a CIFAR batch pickle ({exc or 'truncated'}"
                         "); replace it with the original file or set data.download=true") from None
    if not isinstance(raw, dict):
        raise ValueError(f"data.root: {str(path)!r} holds a {type(raw).__name__}, not the dict "
                         "of a CIFAR batch")
    return raw


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> ArrayDataset:
    raw = _unpickle_cifar(path)
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}
    if "data" not in entry or label_key not in entry:
        raise ValueError(f"data.root: {str(path)!r} lacks the keys 'data' and {label_key!r}")
    try:
        data = np.asarray(entry["data"], dtype=np.uint8)  # (N, 3072)
        labels = np.asarray(entry[label_key], dtype=np.int64)  # (N,)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"data.root: {str(path)!r} holds 'data' or {label_key!r} that are not "
                         "arrays of integers") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ValueError(
            f"data.root: {str(path)!r} has data {data.shape} and labels {labels.shape}; "
            "expected (N, 3072) and (N,)"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise ValueError(f"data.root: {str(path)!r} has label {bad}; allowed: 0 to "
                         f"{num_classes - 1} (CIFAR-{num_classes})")
    # Each row is channel-major: 1024 red bytes, then green, then blue, each row-major 32x32.
    images = data.reshape(-1, 3, 32, 32)
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def _concat(parts: Sequence[ArrayDataset]) -> ArrayDataset:
    return ArrayDataset(
        torch.cat([p.images for p in parts]).contiguous(), torch.cat([p.labels for p in parts])
    )


# ----------------------------------------------------------------------------------------------
# TinyImageNet-200, standard folder layout, decoded once and cached as .npz

_TINY_CACHE = ".adr_scale_cache_v1.npz"
_TINY_SIZE = 64  # pixels


def load_tinyimagenet(root: str) -> tuple[ArrayDataset, ArrayDataset]:
    """TinyImageNet-200 train and labelled val (as test) from ``root`` or ``root/tiny-imagenet-200``.

    Class index = position of the wnid in sorted(wnids). The decoded arrays are cached in
    ``<dataset dir>/.adr_scale_cache_v1.npz``, reused while newer than val_annotations.txt.
    """
    base = _find_tinyimagenet(root)
    wnids = sorted((base / "wnids.txt").read_text().split())
    annotations = base / "val" / "val_annotations.txt"
    cache = base / _TINY_CACHE
    arrays = None
    # >= rather than >: on filesystems with coarse timestamps both can share one tick.
    if cache.is_file() and cache.stat().st_mtime >= annotations.stat().st_mtime:
        arrays = _read_cache(cache, wnids)
    if arrays is None:
        arrays = _decode_tinyimagenet(base, wnids)
        _write_cache(cache, arrays, wnids)
    train = ArrayDataset(torch.from_numpy(arrays["train_x"]), torch.from_numpy(arrays["train_y"]))
    test = ArrayDataset(torch.from_numpy(arrays["test_x"]), torch.from_numpy(arrays["test_y"]))
    return train, test


def _find_tinyimagenet(root: str) -> Path:
    for base in (Path(root), Path(root) / "tiny-imagenet-200"):
        if (base / "wnids.txt").is_file() and (base / "val" / "val_annotations.txt").is_file():
            return base
    expected = Path(root) / "tiny-imagenet-200"
    raise ValueError(
        f"data.root: {root!r} holds no TinyImageNet-200 data (expected {expected}/wnids.txt, "
        f"train/<wnid>/images/*.JPEG and val/val_annotations.txt, or the same directly in "
        f"{root}); download and unzip tiny-imagenet-200.zip there"
    )


def _decode_tinyimagenet(base: Path, wnids: list[str]) -> dict[str, np.ndarray]:
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_paths, train_y = [], []
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise ValueError(f"data.root: TinyImageNet-200 class folder {str(folder)!r} is missing")
        paths = sorted(folder.glob("*.JPEG"))
        train_paths += paths
        train_y += [index[wnid]] * len(paths)
    test_paths, test_y = [], []
    annotations = base / "val" / "val_annotations.txt"
    for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")  # filename, wnid, x0, y0, x1, y1
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(
                f"data.root: {str(annotations)!r} line {line_no} names no known wnid: {line!r}"
            )
        test_paths.append(base / "val" / "images" / fields[0])
        test_y.append(index[fields[1]])
    return {
        "train_x": _decode_images(train_paths, "TinyImageNet train"),
        "train_y": np.asarray(train_y, dtype=np.int64),
        "test_x": _decode_images(test_paths, "TinyImageNet val"),
        "test_y": np.asarray(test_y, dtype=np.int64),
    }


def _decode_images(paths: list[Path], desc: str) -> np.ndarray:
    out = np.empty((len(paths), 3, _TINY_SIZE, _TINY_SIZE), dtype=np.uint8)  # (N, C, H, W)
    # Threads: Pillow releases the GIL while decoding, and file opens overlap on network disks.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = pool.map(_decode_one, paths)
        for i, hwc in enumerate(tqdm(decoded, total=len(paths), desc=desc, unit="img")):
            out[i] = hwc.transpose(2, 0, 1)
    return out


def _decode_one(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        if img.size != (_TINY_SIZE, _TINY_SIZE):
            w, h = img.size
            raise ValueError(
                f"data.root: image {str(path)!r} is {w}x{h}; TinyImageNet-200 images are 64x64"
            )
        return np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)


def _read_cache(cache: Path, wnids: list[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the cache was made for other classes or is unreadable."""
    try:
        with np.load(cache, allow_pickle=False) as npz:
            if list(npz["wnids"]) != wnids:
                return None
            return {k: npz[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _write_cache(cache: Path, arrays: dict[str, np.ndarray], wnids: list[str]) -> None:
    # Write under a private name and rename: an interrupted run or a concurrent worker never
    # leaves a partial cache behind.
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, wnids=np.asarray(wnids), **arrays)
        os.replace(tmp, cache)
    except OSError as err:  # e.g. a read-only dataset directory: run on without a cache
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write TinyImageNet cache {cache}: {err}", stacklevel=3)


# ----------------------------------------------------------------------------------------------
# scikit-learn digits: bundled, 8x8 grey, used by smoke runs

_DIGITS_TEST = 297  # images; the other 1500 train


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (1797, 64) values 0..16 and the labels. The file it ships
    is read as its `load_digits` reads it, without importing scikit-learn (~1.3 CPU s, paid by
    every Ray worker of a smoke run); its loader where the file is not where it used to be."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        return bunch.data, bunch.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


def load_digits() -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's 1797 digits as (N, 1, 8, 8) uint8, split 1500 / 297 independently of any seed."""
    values, target = _sklearn_digits()
    pixels = np.round(values * 255 / 16).astype(np.uint8)  # values 0..16 -> 0..255
    images = pixels.reshape(-1, 1, 8, 8)
    labels = target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))  # fixed split, not the run seed
    test_idx, train_idx = order[:_DIGITS_TEST], order[_DIGITS_TEST:]
    train = ArrayDataset(torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]))
    test = ArrayDataset(torch.from_numpy(images[test_idx]), torch.from_numpy(labels[test_idx]))
    return train, test
