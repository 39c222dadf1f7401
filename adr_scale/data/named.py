"""SVHN, MNIST, Fashion-MNIST and STL-10 from the files torchvision writes (FACTS.md, "Dataset
layouts"). Every reader returns (train, test) as uint8 (N, C, H, W) and int64 labels and refuses
a file of the wrong keys, shape, dtype, length or labels in one line naming it.

No reader runs code from a data file: `.mat` files go through scipy.io.loadmat (a MATLAB v5
parser), idx and STL-10 files are raw bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from adr_scale.data.arrays import ArrayDataset

# ----------------------------------------------------------------------------------------------
# Fetching through torchvision (data.download=true)


def fetch(name: str, root: str, calls: list) -> None:
    """Run torchvision's downloaders `calls` = [(class name, kwargs), ...]; offline, a bad md5 or
    a full disk is one ValueError line."""
    from torchvision import datasets as tv_datasets  # slow import, only when fetching

    try:
        for cls, kwargs in calls:
            getattr(tv_datasets, cls)(root, download=True, **kwargs)
    except (OSError, RuntimeError) as exc:  # offline (URLError is an OSError), bad md5, full disk
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ValueError(f"data.download: could not fetch {name} into {root!r} ({why}); "
                         "download it by hand or check the network") from None


def _arrays(images: np.ndarray, labels: np.ndarray) -> ArrayDataset:
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(images)),
                        torch.from_numpy(labels.astype(np.int64)))


def _check_labels(labels: np.ndarray, num_classes: int, path: Path, what: str, low: int = 0,
                  ) -> None:
    """Labels must lie in [low, num_classes); the first one outside is named."""
    if len(labels) and (labels.min() < low or labels.max() >= num_classes):
        bad = int(labels[(labels < low) | (labels >= num_classes)][0])
        raise ValueError(f"data.root: {str(path)!r} has label {bad}; allowed: {what}")


# ----------------------------------------------------------------------------------------------
# SVHN: {train,test,extra}_32x32.mat


SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def load_svhn(root: str, *, extra: bool = False, download: bool = False,
              ) -> tuple[ArrayDataset, ArrayDataset]:
    """SVHN's cropped digits (format 2): train (+ extra with `extra`) and test, (N, 3, 32, 32).

    The .mat files hold X as (32, 32, 3, N) uint8 and y as (N, 1) in 1..10, where 10 is the digit
    0 (torchvision maps it to 0 as well).
    """
    splits = ["train", "test"] + (["extra"] if extra else [])
    paths = {s: Path(root) / SVHN_FILES[s] for s in splits}
    if download and not all(p.is_file() for p in paths.values()):
        fetch("SVHN", root, [("SVHN", {"split": s}) for s in splits if not paths[s].is_file()])
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(f"data.root: {root!r} holds no SVHN file {missing[0]!r} (expected "
                         f"{', '.join(SVHN_FILES[s] for s in splits)}); set data.download=true "
                         "to fetch it")
    train = _read_svhn(paths["train"])
    if extra:
        more = _read_svhn(paths["extra"])
        train = ArrayDataset(torch.cat([train.images, more.images]).contiguous(),
                             torch.cat([train.labels, more.labels]))
    return train, _read_svhn(paths["test"])


def _read_svhn(path: Path) -> ArrayDataset:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, TypeError, MatReadError ...
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
        raise ValueError(f"data.root: {str(path)!r} is not a readable .mat file ({why}); replace "
                         "it with the original file or set data.download=true") from None
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"data.root: {str(path)!r} lacks the keys 'X' and 'y' (found "
                         f"{', '.join(sorted(k for k in mat if not k.startswith('__'))) or 'none'})")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"data.root: {str(path)!r} has X of {x.dtype} {x.shape}; expected uint8 "
                         "(32, 32, 3, N)")
    numeric = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
    if y.shape not in ((x.shape[3], 1), (x.shape[3],)) or not numeric:
        raise ValueError(f"data.root: {str(path)!r} has y of {y.dtype} {y.shape}; expected "
                         f"({x.shape[3]}, 1) numbers")
    labels = y.reshape(-1)
    if np.issubdtype(labels.dtype, np.floating) and not np.all(labels == np.round(labels)):
        raise ValueError(f"data.root: {str(path)!r} has non-integer labels in y")
    labels = labels.astype(np.int64)
    _check_labels(labels, 11, path, "1 to 10 (10 is the digit 0)", low=1)
    labels[labels == 10] = 0
    return _arrays(x.transpose(3, 2, 0, 1), labels)  # (N, C, H, W)


# ----------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: idx files, gzipped or not

IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers (LeCun's idx format: 0x0803, 0x0801)
_IDX_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's class names
_IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def load_idx_dataset(name: str, root: str, *, download: bool = False,
                     ) -> tuple[ArrayDataset, ArrayDataset]:
    """MNIST or Fashion-MNIST (`name`), (N, 1, 28, 28), from idx files (`.gz` or not) in `root`,
    `root/<Name>/raw/` or `root/<Name>/` (Name: MNIST, FashionMNIST, as torchvision writes)."""
    folder = _IDX_FOLDER[name]
    found = _find_idx(root, folder)
    if found is None and download:
        fetch(folder, root, [(folder, {"train": True}), (folder, {"train": False})])
        found = _find_idx(root, folder)
    if found is None:
        raise ValueError(f"data.root: {root!r} holds no {folder} idx files (expected "
                         f"{_IDX_STEMS['train'][0]}[.gz] ... in {root}, {root}/{folder}/raw or "
                         f"{root}/{folder}); set data.download=true to fetch them")
    out = []
    for split in ("train", "test"):
        images = read_idx(found[split][0], IDX_IMAGES)
        labels = read_idx(found[split][1], IDX_LABELS)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"data.root: {str(found[split][0])!r} holds {images.shape} images "
                             f"and {str(found[split][1])!r} {labels.shape} labels; expected "
                             "(N, H, W) and (N,)")
        labels = labels.astype(np.int64)
        _check_labels(labels, 10, found[split][1], "0 to 9")
        out.append(_arrays(images[:, None], labels))
    return out[0], out[1]


def _find_idx(root: str, folder: str) -> dict[str, tuple[Path, Path]] | None:
    for base in (Path(root), Path(root) / folder / "raw", Path(root) / folder):
        paths = {}
        for split, stems in _IDX_STEMS.items():
            pair = [next((base / (stem + ext) for ext in ("", ".gz")
                          if (base / (stem + ext)).is_file()), None) for stem in stems]
            if None in pair:
                break
            paths[split] = (pair[0], pair[1])
        else:
            return paths
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file (gzipped when it ends in .gz) as uint8: big-endian magic (0x08 = unsigned
    byte, then the number of dimensions), one big-endian int32 per dimension, then the bytes."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"data.root: {str(path)!r} is not a readable idx file "
                         f"({exc or 'truncated'})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise ValueError(f"data.root: {str(path)!r} has idx magic {got}; expected {magic} "
                         f"({'images' if magic == IDX_IMAGES else 'labels'})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    if len(raw) != start + int(np.prod(dims)):
        raise ValueError(f"data.root: {str(path)!r} has a header for {dims} "
                         f"({start + int(np.prod(dims))} bytes) but holds {len(raw)} bytes")
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims).copy()  # writable


# ----------------------------------------------------------------------------------------------
# STL-10: stl10_binary/{train,test}_{X,y}.bin

STL10_DIR = "stl10_binary"
_STL10_SIDE = 96  # pixels


def load_stl10(root: str, *, download: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    """STL-10's labelled train (5,000) and test (8,000) images, (N, 3, 96, 96); the unlabelled
    100,000 are not read. Labels 1..10 in the files map to 0..9."""
    base = Path(root) / STL10_DIR
    names = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    if download and not all((base / n).is_file() for n in names):
        fetch("STL-10", root, [("STL10", {"split": "train"})])  # one archive holds all splits
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise ValueError(f"data.root: {root!r} holds no STL-10 file {str(base / missing[0])!r} "
                         "(expected stl10_binary/{train,test}_{X,y}.bin); set data.download=true "
                         "to fetch it")
    return (_read_stl10(base / "train_X.bin", base / "train_y.bin"),
            _read_stl10(base / "test_X.bin", base / "test_y.bin"))


def _read_stl10(x_path: Path, y_path: Path) -> ArrayDataset:
    per_image = 3 * _STL10_SIDE * _STL10_SIDE
    raw = np.fromfile(x_path, dtype=np.uint8)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    if len(raw) % per_image or len(raw) // per_image != len(labels):
        raise ValueError(f"data.root: {str(x_path)!r} holds {len(raw)} bytes and {str(y_path)!r} "
                         f"{len(labels)} labels; expected {per_image} bytes (3x96x96) per label")
    _check_labels(labels, 11, y_path, "1 to 10", low=1)
    # Each image is stored channel by channel, every channel column-major: swap H and W.
    images = raw.reshape(-1, 3, _STL10_SIDE, _STL10_SIDE).transpose(0, 1, 3, 2)
    return _arrays(images, labels - 1)
