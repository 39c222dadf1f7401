"""Faults in a built synthetic cache, made for real on a cache of real shards: an out-of-range
label, an unwritable cache directory, flipped image bytes, an old cache without a digest. Each is
rebuilt from the shards in one line, or refused in one line (exit 2 from the CLI, no run files).
The cache directory on a real read-only file system: tests/integration/test_synthetic_guards_fs.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import adr_scale.data.synthetic_cache as synthetic_cache
from adr_scale.config import ConfigError
from adr_scale.data.synthetic import SyntheticSet
from adr_scale.data.synthetic_cache import SyntheticDataError
from adr_scale.train import main as train_main
from data_pipeline.shard_npz import shard_npz


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """400 digits-shaped images (1x8x8, classes 0-9) in 4 real WebDataset shards."""
    base = tmp_path_factory.mktemp("guards")
    rng = np.random.default_rng(1)
    np.savez(base / "set.npz", image=rng.integers(0, 256, (400, 8, 8, 1), dtype=np.uint8),
             label=np.arange(400) % 10)
    shard_npz(str(base / "set.npz"), base / "shards", 100, progress=False)
    return base / "shards"


def _build(shards: Path, cache: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    synth = SyntheticSet(shards, cache, workers=1, progress=False)
    assert synth.built
    return synth.cache_path, synth.array().copy(), synth.label_array().copy()


def _rewrite(path: Path, change) -> None:
    """Rewrite a cache file in place (same size), as a damaged copy would be."""
    data = np.fromfile(path, np.uint8 if path.suffix == ".u8" else np.int64)
    change(data)
    with open(path, "rb+") as f:
        f.write(data.tobytes())


def _without_a_shard(shards: Path, tmp: Path) -> Path:
    copy = tmp / "shards"
    shutil.copytree(shards, copy)
    (copy / "shard-000002.tar").unlink()
    return copy


def _train(shards: Path, cache: Path, out: Path, workers: int, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = train_main(["--preset", "smoke", "--set", "train.device=cpu",
                       "--set", f"data.synthetic={shards}", "--set", f"data.synthetic_cache={cache}",
                       "--set", "data.synthetic_fraction=0.75", "--out", str(out),
                       "--workers", str(workers), "--no-progress"])
    return code, capsys.readouterr().err.strip().splitlines()


def _rebuild_lines(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if "rebuilding from the shards" in x]


# ---------------------------------------------------------------------------------------------
# 1. A label outside [0, K) in labels.i64


def test_an_out_of_range_label_is_named_and_rebuilt_from_the_shards(shards, tmp_path, capsys):
    path, images, labels = _build(shards, tmp_path)
    _rewrite(path / "labels.i64", lambda a: a.__setitem__(12, 57))
    capsys.readouterr()
    again = SyntheticSet(shards, tmp_path, workers=1, progress=False)
    lines = _rebuild_lines(capsys)
    assert len(lines) == 1 and f"{path / 'labels.i64'} holds label 57 at row 12" in lines[0]
    assert "[0, 10)" in lines[0] and again.built
    np.testing.assert_array_equal(again.label_array(), labels)
    np.testing.assert_array_equal(again.array(), images)


@pytest.mark.parametrize("workers", [0, 1])  # in-process fit; the Ray driver (refuses before Ray)
def test_an_out_of_range_label_without_the_shards_is_refused_before_run_files(
        shards, tmp_path, capsys, workers):
    copy = _without_a_shard(shards, tmp_path)
    path, _, _ = _build(shards, tmp_path / "cache")
    shutil.copy(shards / "manifest.parquet", copy / "manifest.parquet")  # same cache digest
    _rewrite(path / "labels.i64", lambda a: a.__setitem__(3, -1))
    before = (path / "labels.i64").read_bytes()
    code, err = _train(copy, tmp_path / "cache", tmp_path / "run", workers, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: data.synthetic_cache: {path / 'labels.i64'} holds label -1 "
                             "at row 3; allowed: a class in [0, 10), and it cannot be rebuilt: ")
    assert "shard-000002.tar missing or resized" in err[0]
    assert not (tmp_path / "run").exists()  # no run files, not even the directory
    assert (path / "labels.i64").read_bytes() == before  # the evidence is kept, not deleted


# ---------------------------------------------------------------------------------------------
# 2. An empty, unwritable data.synthetic_cache


@contextlib.contextmanager
def _unwritable(directory: Path):
    """No file can be created in `directory`: chmod 555, or as root (who ignores modes) the
    immutable attribute (ext4, xfs, btrfs); skips where neither holds."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        undo = lambda: directory.chmod(0o755)  # noqa: E731
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(directory)],
                                                   capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)  # noqa: E731
    else:
        pytest.skip("root on a file system without chattr +i: cannot make a directory unwritable")
    try:
        with pytest.raises(OSError):
            (directory / "probe").touch()
        yield
    finally:
        undo()


def test_an_unwritable_cache_directory_is_one_line_naming_the_field(shards, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    with _unwritable(cache):
        with pytest.raises(ConfigError) as exc:
            SyntheticSet(shards, cache, workers=1, progress=False)
        for workers in (0, 1):
            code, err = _train(shards, cache, tmp_path / f"run{workers}", workers, capsys)
            assert code == 2 and err == [f"error: {exc.value}"]
            assert not (tmp_path / f"run{workers}").exists()
    message = str(exc.value)
    assert message.startswith(f"data.synthetic_cache: cannot write to {str(cache)!r} (")
    assert message.endswith("allowed: a writable node-local directory (point "
                            "data.synthetic_cache at one, e.g. on the node's local disk)")
    assert "\n" not in message and list(cache.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 3. Image bytes flipped in place (same size), and an old cache without a digest


def test_flipped_image_bytes_are_detected_and_rebuilt(shards, tmp_path, capsys):
    path, images, _ = _build(shards, tmp_path)
    stored = json.loads((path / "meta.json").read_text())["check"]
    assert stored["images_bytes"] == 400 * 64 and stored["labels_bytes"] == 400 * 8
    _rewrite(path / "images.u8", lambda a: np.bitwise_xor(a, 0xFF, out=a))
    capsys.readouterr()
    again = SyntheticSet(shards, tmp_path, workers=1, progress=False)
    lines = _rebuild_lines(capsys)
    assert len(lines) == 1 and "does not match the digest in meta.json" in lines[0]
    assert again.built
    np.testing.assert_array_equal(again.array(), images)


def test_flipped_image_bytes_without_the_shards_are_refused(shards, tmp_path):
    copy = _without_a_shard(shards, tmp_path)
    path, _, _ = _build(shards, tmp_path / "cache")
    shutil.copy(shards / "manifest.parquet", copy / "manifest.parquet")
    _rewrite(path / "images.u8", lambda a: np.bitwise_xor(a, 0xFF, out=a))
    with pytest.raises(SyntheticDataError) as exc:
        SyntheticSet(copy, tmp_path / "cache", workers=1, progress=False)
    assert isinstance(exc.value, ConfigError) and "\n" not in str(exc.value)
    assert str(exc.value).startswith(f"data.synthetic_cache: {path / 'images.u8'} or labels.i64 "
                                     "does not match the digest in meta.json (damaged?)")
    assert (path / "images.u8").is_file()


def test_an_old_cache_without_a_digest_is_rebuilt(shards, tmp_path, capsys):
    path, images, _ = _build(shards, tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    del meta["check"]
    (path / "meta.json").write_text(json.dumps(meta | {"format": 1}))
    capsys.readouterr()
    again = SyntheticSet(shards, tmp_path, workers=1, progress=False)
    lines = _rebuild_lines(capsys)
    assert len(lines) == 1 and "format 1 holds no integrity digest" in lines[0] and again.built
    assert json.loads((path / "meta.json").read_text())["format"] == synthetic_cache.CACHE_FORMAT == 2
    np.testing.assert_array_equal(again.array(), images)


def test_the_digest_samples_fixed_blocks_first_and_last_included(shards, tmp_path, monkeypatch):
    """4 blocks of 256 bytes of a 25,600-byte images.u8 at offsets 0, 8448, 16896, 25344: a byte
    flipped in a block changes the digest, one between blocks does not (the documented limit)."""
    monkeypatch.setattr(synthetic_cache, "CHECK_BLOCKS", 4)
    monkeypatch.setattr(synthetic_cache, "CHECK_BLOCK_BYTES", 256)
    path, _, _ = _build(shards, tmp_path)
    reference = synthetic_cache._cache_check(path)
    for offset, seen in ((0, True), (25_599, True), (8448 + 100, True), (4000, False)):
        _rewrite(path / "images.u8", lambda a, i=offset: np.bitwise_xor(a[i:i + 1], 1, out=a[i:i + 1]))
        assert (synthetic_cache._cache_check(path) != reference) is seen, offset
        _rewrite(path / "images.u8", lambda a, i=offset: np.bitwise_xor(a[i:i + 1], 1, out=a[i:i + 1]))
    assert synthetic_cache._cache_check(path) == reference
