"""A user's own data in one of three generic forms, each with a train and a test split:

    imagefolder   root/train/<class>/*.png|jpg|...  and root/test/<class>/* (or root/val/)
    npz           root/train.npz, root/test.npz with `image` (uint8 N x H x W [x C]) and `label`
    shards        root/train/, root/test/: this project's WebDataset shards with manifest.parquet

The class count, channels and image size come from the data (data.class_names, data.channels,
data.image_size when set are requirements: the data must agree or is converted, see below), and
the per-channel mean and std are computed on the training split (before the validation carve-out)
unless data.mean / data.std are set. `load_generic` returns the arrays and the resolved
DatasetInfo; the driver writes the resolved values into the run's config, so evaluation and a
resumed run use the same ones without recomputing them.

imagefolder is decoded once, in parallel worker processes, into a uint8 array cache keyed by the
list of files with their sizes and mtimes and by the decoding settings (a changed, added or
removed file gives another key, so the cache is rebuilt). It lives in data.cache_dir or
root/.adr_scale_cache; one process per node builds it (the file lock of the synthetic cache), in
a temporary directory renamed when complete. A cache whose files are shorter or longer than its
meta.json says (a truncated copy) is refused in one line naming the file: it was written
atomically, so a wrong size means it was damaged afterwards, which is worth a look.
shards reuse the synthetic images' verified cache (SyntheticSet); npz needs none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adr_scale.config import ConfigError, DataConfig
from adr_scale.data.arrays import ArrayDataset, DatasetInfo
from adr_scale.image_decode import IMAGE_EXTENSIONS, decode_task, first_size

GENERIC_FORMS = ("imagefolder", "npz", "shards")
CACHE_FORMAT = 1  # meta.json "format" of an imagefolder cache; another is rebuilt
_TASK_IMAGES = 500  # images per decode task (a few per worker keep the cores even)


@dataclass(frozen=True)
class Loaded:
    train: ArrayDataset
    test: ArrayDataset
    info: DatasetInfo
    stats_computed: bool  # mean / std came from the data now, not from the config


def load_generic(cfg: DataConfig) -> Loaded:
    """(train, test, info) of a generic form; every user error is a one-line ConfigError."""
    if cfg.dataset == "imagefolder":
        return _load_imagefolder(cfg)
    if cfg.dataset == "npz":
        return _load_npz(cfg)
    if cfg.dataset == "shards":
        return _load_shards(cfg)
    raise ConfigError(f"data.dataset: {cfg.dataset!r} is not a generic form; allowed: "
                      + ", ".join(GENERIC_FORMS))


# ----------------------------------------------------------------------------------------------
# Statistics


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (ddof=0) of uint8 (N, C, H, W) images scaled to [0, 1].

    Exact integer sums from a 256-bin histogram per channel, so the result does not depend on
    chunking and equals NumPy's float64 np.mean / np.std to rounding."""
    c = images.shape[1]
    hist = np.zeros((c, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk])
        for ch in range(c):
            hist[ch] += np.bincount(block[:, ch].ravel(), minlength=256)
    values = np.arange(256, dtype=np.int64)
    n = hist.sum(axis=1)  # pixels per channel
    s1, s2 = hist @ values, hist @ (values * values)  # exact
    mean = s1 / n / 255.0
    var = np.maximum(s2 / n / 255.0**2 - mean * mean, 0.0)
    return tuple(float(m) for m in mean), tuple(float(v) for v in np.sqrt(var))


def _stats(cfg: DataConfig, train: np.ndarray, stored: dict | None = None,
           ) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """(mean, std, computed now): the config's, else those stored with the cache, else computed."""
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std), False
    if stored is not None:
        return tuple(stored["mean"]), tuple(stored["std"]), True
    mean, std = channel_stats(train)
    return mean, std, True


def _check_names(cfg: DataConfig, names: list[str], where: str) -> None:
    if cfg.class_names is not None and list(cfg.class_names) != names:
        raise ConfigError(f"data.class_names: the config (the run's) names {len(cfg.class_names)} "
                          f"classes {_short(cfg.class_names)}, {where} has {len(names)}: "
                          f"{_short(names)}; allowed: the same data, or data.class_names=null")


def _short(names: list[str]) -> str:
    return "[" + ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") + "]"


def _info(names: list[str], shape: tuple[int, ...], mean, std) -> DatasetInfo:
    return DatasetInfo(num_classes=len(names), in_channels=shape[0], image_size=shape[1],
                       mean=tuple(mean), std=tuple(std), class_names=tuple(names))


# ----------------------------------------------------------------------------------------------
# imagefolder


def _split_dirs(root: Path) -> tuple[Path, Path]:
    train = root / "train"
    test = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train.is_dir() or test is None:
        raise ConfigError(f"data.root: {str(root)!r} holds no imagefolder splits (expected "
                          f"{root}/train/<class>/* and {root}/test/<class>/* or val/)")
    return train, test


def _class_files(split: Path) -> dict[str, list[Path]]:
    """{class name: image files, sorted}, classes as sorted folder names (torchvision's order)."""
    classes = sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))
    out = {}
    for name in classes:
        files = []
        for dirpath, dirnames, filenames in os.walk(split / name, followlinks=True):
            dirnames.sort()
            files += [Path(dirpath) / f for f in sorted(filenames)
                      if f.lower().endswith(IMAGE_EXTENSIONS)]
        out[name] = sorted(files)
    return out


def _listing(root: Path) -> tuple[list[str], dict[str, list[Path]], dict[str, list[Path]]]:
    train_dir, test_dir = _split_dirs(root)
    train, test = _class_files(train_dir), _class_files(test_dir)
    if not train:
        raise ConfigError(f"data.root: {str(train_dir)!r} has no class folder; allowed: "
                          "train/<class>/<image files>")
    for split_dir, classes in ((train_dir, train), (test_dir, test)):
        for name, files in classes.items():
            if not files:
                raise ConfigError(f"data.root: class folder {str(split_dir / name)!r} holds no "
                                  f"image ({', '.join(IMAGE_EXTENSIONS)}); remove it or add images")
    extra = sorted(set(test) - set(train))
    if extra:
        raise ConfigError(f"data.root: class {extra[0]!r} of {str(test_dir)!r} has no folder in "
                          f"{str(train_dir)!r}; allowed: test classes that train also has")
    return sorted(train), train, test


def _load_imagefolder(cfg: DataConfig) -> Loaded:
    root = Path(cfg.root)
    names, train_files, test_files = _listing(root)
    _check_names(cfg, names, f"{root}/train")
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for split, classes in (("train", train_files), ("test", test_files)):
        paths = [p for n in sorted(classes) for p in classes[n]]
        labels = np.asarray([index[n] for n in sorted(classes) for _ in classes[n]], np.int64)
        splits[split] = (paths, labels)
    channels = cfg.channels or 3  # as torchvision's ImageFolder loader (convert("RGB"))
    size = cfg.image_size or _first_size(splits["train"][0][0])
    cache = ImageFolderCache(root, splits, size=size, channels=channels, strict=cfg.image_size is None,
                             skip_bad=cfg.skip_bad_images, cache_dir=cfg.cache_dir)
    arrays, meta = cache.open()
    if meta["skipped"]:
        first = next(iter(meta["skipped"].items()))
        print(f"imagefolder {root}: skipped {len(meta['skipped'])} unreadable image(s) "
              f"(data.skip_bad_images=true), e.g. {first[0]}: {first[1]}", file=sys.stderr)
    mean, std, computed = _stats(cfg, arrays["train_x"], meta)
    train = ArrayDataset(torch.from_numpy(arrays["train_x"]), torch.from_numpy(arrays["train_y"]))
    test = ArrayDataset(torch.from_numpy(arrays["test_x"]), torch.from_numpy(arrays["test_y"]))
    return Loaded(train, test, _info(names, (channels, size, size), mean, std), computed)


def _first_size(path: Path) -> int:
    try:
        w, h = first_size(str(path))
    except (OSError, SyntaxError) as exc:
        raise ConfigError(f"data.root: image {str(path)!r} is unreadable ({exc}); set "
                          "data.image_size, or replace the file") from None
    if w != h:
        raise ConfigError(f"data.image_size: image {str(path)!r} is {w}x{h} (not square); set "
                          "data.image_size to resize (shorter side) and centre-crop every image")
    return w


class ImageFolderCache:
    """The decoded arrays of an imagefolder; see the module docstring."""

    def __init__(self, root: Path, splits: dict[str, tuple[list[Path], np.ndarray]], *,
                 size: int, channels: int, strict: bool, skip_bad: bool,
                 cache_dir: str | None, workers: int | None = None,
                 task_images: int = _TASK_IMAGES) -> None:
        self.root, self.splits = root, splits
        self.task_images = task_images
        self.size, self.channels, self.strict, self.skip_bad = size, channels, strict, skip_bad
        self.workers = workers
        key = {"format": CACHE_FORMAT, "size": size, "channels": channels, "strict": strict,
               "skip_bad": skip_bad, "files": {}}
        for split, (paths, labels) in splits.items():
            entries = []
            for p, y in zip(paths, labels.tolist(), strict=True):
                st = p.stat()
                entries.append([str(p.relative_to(root)), y, st.st_size, st.st_mtime_ns])
            key["files"][split] = entries
        self.digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        self.cache_root = Path(cache_dir) if cache_dir else root / ".adr_scale_cache"
        self.path = self.cache_root / f"imagefolder-{self.digest[:20]}"
        self.built = False  # whether this process built it
        self.processes = 0  # decoding processes of the build (0: no build here)

    def _expected_bytes(self, meta: dict) -> dict[str, int]:
        per = self.channels * self.size * self.size
        return {f"{s}_images.u8": meta["num_images"][s] * per for s in self.splits} | {
            f"{s}_labels.i64": meta["num_images"][s] * 8 for s in self.splits}

    def _meta(self) -> dict | None:
        """The cache's meta.json, None when there is no complete cache of this key; a cache file of
        the wrong length is a one-line ConfigError."""
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_text())
            ok = meta["format"] == CACHE_FORMAT and meta["digest"] == self.digest
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ConfigError(f"data.cache_dir: {str(meta_file)!r} is unreadable or of another "
                              f"set; delete {str(self.path)!r} to rebuild it")
        for name, want in self._expected_bytes(meta).items():
            f = self.path / name
            got = f.stat().st_size if f.is_file() else -1
            if got != want:
                raise ConfigError(f"data.cache_dir: cache file {str(f)!r} holds {got} bytes, "
                                  f"{want} expected (a truncated or damaged copy); delete "
                                  f"{str(self.path)!r} to rebuild it")
        return meta

    def open(self) -> tuple[dict[str, np.ndarray], dict]:
        from adr_scale.data.synthetic_cache import build_lock

        meta = self._meta()
        if meta is None:
            try:
                self.cache_root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"data.cache_dir: cannot create {str(self.cache_root)!r} "
                                  f"({exc.strerror}); allowed: a writable directory (set "
                                  "data.cache_dir when data.root is read-only)") from None
            with build_lock(self.cache_root / f"imagefolder-{self.digest[:20]}.lock"):
                meta = self._meta()  # another process may have built it while we waited
                if meta is None:
                    self._build()
                    self.built = True
                    meta = self._meta()
        c, s = self.channels, self.size
        arrays = {}
        for split in self.splits:
            n = meta["num_images"][split]
            arrays[f"{split}_x"] = np.fromfile(self.path / f"{split}_images.u8",
                                               np.uint8).reshape(n, c, s, s)
            arrays[f"{split}_y"] = np.fromfile(self.path / f"{split}_labels.i64", np.int64)
        return arrays, meta

    def _build(self) -> None:
        tmp = self.cache_root / f".{self.path.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            shape = (self.channels, self.size, self.size)
            tasks, files = [], {}
            for split, (paths, labels) in self.splits.items():
                images = tmp / f"{split}_images.u8"
                with open(images, "wb") as f:
                    f.truncate(len(paths) * int(np.prod(shape)))
                labels.astype(np.int64).tofile(tmp / f"{split}_labels.i64")
                files[split] = images
                for start in range(0, len(paths), self.task_images):
                    tasks.append({"split": split, "images_file": str(images), "row": start,
                                  "shape": (len(paths), *shape), "strict": self.strict,
                                  "paths": [str(p) for p in paths[start:start + self.task_images]]})
            bad, self.processes = _run(tasks, self.workers, f"decode {self.root.name}")
            skipped: dict[str, str] = {}
            counts = {}
            for split, (paths, _) in self.splits.items():
                rows = sorted(bad.get(split, {}))
                if rows and not self.skip_bad:
                    why = bad[split][rows[0]]
                    more = f" (and {sum(map(len, bad.values())) - 1} more)" if \
                        sum(map(len, bad.values())) > 1 else ""
                    raise ConfigError(f"data.root: image {str(paths[rows[0]])!r} is unreadable "
                                      f"({why}){more}; allowed: readable images, or "
                                      "data.skip_bad_images=true to leave such files out")
                skipped |= {str(paths[r].relative_to(self.root)): bad[split][r] for r in rows}
                counts[split] = _drop_rows(files[split], tmp / f"{split}_labels.i64", len(paths),
                                           rows, shape)
                if counts[split] == 0:
                    raise ConfigError(f"data.root: no readable image in the {split} split of "
                                      f"{str(self.root)!r}")
            train = np.memmap(files["train"], np.uint8, "r", shape=(counts["train"], *shape))
            mean, std = channel_stats(train)
            del train
            for f in tmp.iterdir():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
            meta = {"format": CACHE_FORMAT, "digest": self.digest, "num_images": counts,
                    "image_shape": list(shape), "source": str(self.root.resolve()),
                    "skipped": skipped, "mean": list(mean), "std": list(std)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(tasks: list[dict], workers: int | None, desc: str,
         ) -> tuple[dict[str, dict[int, str]], int]:
    """decode_task over `tasks` in spawned worker processes (one per core, none for a small set);
    returns ({split: {row: why}} of the unreadable images, the processes that decoded)."""
    from tqdm.auto import tqdm

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = sum(len(t["paths"]) for t in tasks)
    # a worker costs ~0.3 s to spawn: none below ~2,000 images
    workers = min(len(tasks), workers or min(cores or 1, -(-n // 2000)))
    bad: dict[str, dict[int, str]] = {}
    with tqdm(total=n, desc=desc, unit="img", unit_scale=True, dynamic_ncols=True,
              disable=n < 5000) as bar:
        if workers <= 1:
            results = map(decode_task, tasks)
            pool = None
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            results = pool.map(decode_task, tasks)
        try:
            for task, errors in zip(tasks, results, strict=True):
                for row, why in errors:
                    bad.setdefault(task["split"], {})[row] = why
                bar.update(len(task["paths"]))
        except ValueError as exc:  # data.image_size: sizes differ
            raise ConfigError(str(exc)) from None
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return bad, max(workers, 1)


def _drop_rows(images: Path, labels: Path, n: int, rows: list[int], shape: tuple[int, ...]) -> int:
    """Remove `rows` from the two array files in place (order kept); returns the rows left."""
    if not rows:
        return n
    keep = np.setdiff1d(np.arange(n), rows)
    im = np.memmap(images, np.uint8, "r+", shape=(n, *shape))
    lb = np.memmap(labels, np.int64, "r+", shape=(n,))
    for start in range(0, len(keep), 4096):  # keep[i] >= i: each chunk reads before it writes
        src = keep[start:start + 4096]
        im[start:start + len(src)] = im[src]
        lb[start:start + len(src)] = lb[src]
    im.flush()
    lb.flush()
    del im, lb
    os.truncate(images, len(keep) * int(np.prod(shape)))
    os.truncate(labels, len(keep) * 8)
    return len(keep)


# ----------------------------------------------------------------------------------------------
# npz


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"data.root: {str(path)!r} does not exist (expected train.npz and "
                          "test.npz with 'image' and 'label')")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = sorted(npz.files)
            if "image" not in keys or "label" not in keys:
                raise ConfigError(f"data.root: {str(path)!r} lacks the keys 'image' and 'label' "
                                  f"(found {', '.join(keys) or 'none'})")
            image, label = npz["image"], npz["label"]
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile, pickle refusal, truncated members ...
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
        raise ConfigError(f"data.root: {str(path)!r} is not a readable .npz of arrays ({why})"
                          ) from None
    if image.dtype != np.uint8 or image.ndim not in (3, 4) or (image.ndim == 4
                                                               and image.shape[3] not in (1, 3)):
        raise ConfigError(f"data.root: {str(path)!r} has 'image' of {image.dtype} {image.shape}; "
                          "expected uint8 (N, H, W) or (N, H, W, C) with C 1 or 3")
    if image.shape[1] != image.shape[2]:
        raise ConfigError(f"data.root: {str(path)!r} has {image.shape[1]}x{image.shape[2]} images; "
                          "expected square ones")
    if label.shape != (len(image),) or not np.issubdtype(label.dtype, np.integer):
        raise ConfigError(f"data.root: {str(path)!r} has 'label' of {label.dtype} {label.shape}; "
                          f"expected integers ({len(image)},)")
    if len(label) and label.min() < 0:
        raise ConfigError(f"data.root: {str(path)!r} has label {int(label.min())}; allowed: "
                          "0 to the number of classes - 1")
    chw = image[:, None] if image.ndim == 3 else image.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(chw), label.astype(np.int64)


def _load_npz(cfg: DataConfig) -> Loaded:
    root = Path(cfg.root)
    (train_x, train_y), (test_x, test_y) = (_read_npz(root / "train.npz"),
                                            _read_npz(root / "test.npz"))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ConfigError(f"data.root: {root}/test.npz holds {test_x.shape[1:]} images, "
                          f"train.npz {train_x.shape[1:]}; allowed: the same (C, H, W)")
    _require_shape(cfg, train_x.shape[1:], f"{root}/train.npz")
    k = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
    names = list(cfg.class_names) if cfg.class_names is not None else [str(i) for i in range(k)]
    if k > len(names):
        raise ConfigError(f"data.root: {root} has label {k - 1}; allowed: 0 to {len(names) - 1} "
                          f"(data.class_names has {len(names)} classes)")
    mean, std, computed = _stats(cfg, train_x)
    return Loaded(ArrayDataset(torch.from_numpy(train_x), torch.from_numpy(train_y)),
                  ArrayDataset(torch.from_numpy(test_x), torch.from_numpy(test_y)),
                  _info(names, train_x.shape[1:], mean, std), computed)


def _require_shape(cfg: DataConfig, chw: tuple[int, ...], where: str) -> None:
    """Arrays are not resized: data.channels / data.image_size, when set, must match them."""
    if cfg.channels is not None and cfg.channels != chw[0]:
        raise ConfigError(f"data.channels: {cfg.channels}, but {where} holds {chw[0]}-channel "
                          f"images; allowed: null or {chw[0]}")
    if cfg.image_size is not None and cfg.image_size != chw[1]:
        raise ConfigError(f"data.image_size: {cfg.image_size}, but {where} holds {chw[1]}x{chw[2]} "
                          f"images (arrays are not resized); allowed: null or {chw[1]}")


# ----------------------------------------------------------------------------------------------
# shards


def _load_shards(cfg: DataConfig) -> Loaded:
    from adr_scale.data.synthetic import SyntheticSet
    from adr_scale.data.synthetic_cache import SyntheticDataError

    root = Path(cfg.root)
    sets = {}
    for split in ("train", "test"):
        try:
            sets[split] = SyntheticSet(root / split, cache_dir=cfg.cache_dir,
                                       skip_bad=cfg.skip_bad_images, tar_reader=cfg.tar_reader,
                                       progress=False)
        except (ConfigError, SyntheticDataError) as exc:
            # the synthetic cache names data.synthetic; here the directory is data.root's
            msg = str(exc).replace("data.synthetic:", "data.root:", 1)
            raise ConfigError(msg.replace("data.skip_bad_shards", "data.skip_bad_images")) from None
    train, test = sets["train"], sets["test"]
    if train.image_shape != test.image_shape or train.num_classes != test.num_classes:
        raise ConfigError(f"data.root: {root}/test holds {test.num_classes} classes of "
                          f"{test.image_shape}, {root}/train {train.num_classes} of "
                          f"{train.image_shape}; allowed: the same")
    _require_shape(cfg, train.image_shape, f"{root}/train")
    names = [str(i) for i in range(train.num_classes)]
    _check_names(cfg, names, f"{root}/train/manifest.parquet")
    stats_file = train.cache_path / "stats.json"
    stored = json.loads(stats_file.read_text()) if stats_file.is_file() else None
    mean, std, computed = _stats(cfg, train.array(), stored)
    if stored is None and cfg.mean is None:  # kept with the decoded cache it describes
        tmp = stats_file.with_name(f"stats.json.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"mean": mean, "std": std}) + "\n")
            os.replace(tmp, stats_file)
        except OSError:
            tmp.unlink(missing_ok=True)  # a read-only cache: recomputed next time
    arrays = [ArrayDataset(torch.from_numpy(np.array(s.array())),
                           torch.from_numpy(np.array(s.label_array()))) for s in (train, test)]
    return Loaded(arrays[0], arrays[1], _info(names, train.image_shape, mean, std), computed)
