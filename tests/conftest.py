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
# One intra-op thread in every test process and the processes it starts (CLI drivers training
# in-process): tiny networks on 2 cores shared by two xdist workers, where threads spin-waiting
# for each other cost several times the CPU (see `one_thread`). A Ray worker gets one from Ray.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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


# -- two workers: pytest-xdist, `-n 2 --dist loadscope` in pyproject.toml ----------------------
# On the 2-core CI box much of an integration test runs on one core (one trial or run at a
# time, Ray starting up, a driver waiting for a stop to land) and the unit tier is single
# threaded, so a second worker fills the other core. A module is one unit of work (its module
# fixtures are set up once, on one worker) and units are handed out in collection order
# (`--no-loadscope-reorder`), so the slowest modules go first: longest first balances the two
# workers.
# (`--dist loadgroup` could split a module across the workers, but with pytest 9.2 xdist 3.8
# cannot add its group to a test's id and sends every test on its own, module fixtures and all.)
SLOWEST_FIRST = (  # seconds in the suite at 0558e20, where over a minute
    "test_tune_interrupt.py",  # 220: one search stopped three ways, its race and the ImageFolder
    "test_tune_resume.py",  # 160 as two searches, now one killed twice; a second Ray
    "test_train_signals.py",  # 110: a Ray run stopped three ways, the in-process run, reference
    "test_tune_halving.py",  # 110
    "test_tune_pbt.py",  # 70
    "test_train_ray.py",  # 75
    "test_generate_ray.py",  # 65
    "test_checkpointing.py",
    "test_reliability_processes.py",
)


def _rank(item) -> int:
    name = item.path.name
    return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker: slowest modules first
        items.sort(key=_rank)  # stable: the rest keeps its order, integration before unit
