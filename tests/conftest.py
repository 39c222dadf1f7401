"""Environment for every test: quiet, fast Ray and a deterministic CPU."""

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Per TorchTrainer.fit, what a one-node CPU test never uses: the preemption watcher (an actor
# process polling for node drains), Prometheus metrics and the JSON log files of controller and
# workers. benchmarks/fit_overhead.py measures the CPU seconds a fit saves (README "Tests").
# Every os.environ setting here reaches the subprocess drivers (CLI tests) and Ray's workers.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Small convolutions on 2 shared cores: intra-op threads that spin-wait for each other make
    them ~10x slower (AutoAttack too), so modules that ask for this run single-threaded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_digit_pngs(root, count: int = 600) -> None:
    """scikit-learn's bundled digits (8x8 grey) written as an ImageFolder: root/train/<digit>/,
    and every fifth image in root/test/<digit>/."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.data * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)
    for i, (img, y) in enumerate(zip(pixels[:count], bunch.target[:count], strict=True)):
        folder = root / ("test" if i % 5 == 0 else "train") / str(y)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")


def one_line(exc, *parts: str) -> str:
    """The message of a raised error (a pytest ExceptionInfo): one line holding every part."""
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg
