"""Ray Train on a local CPU cluster: 2 workers == 1 worker, a crashed worker, a killed driver."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adr_scale.config import apply_overrides, get_preset
from adr_scale.engine import fit, load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# No randomness inside a step (no augmentation, no attack, no BatchNorm), so 2 ranks on halves of
# the same global batch must give the weights of one process on the whole batch.
EXACT = ["train.device=cpu", "train.method=standard", "adr.enabled=false", "model.arch=tiny_nonorm",
         "data.crop_padding=0", "data.flip=false", "train.epochs=2"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _without_time(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, tmp_path_factory):
    from adr_scale.train import launch

    out = tmp_path_factory.mktemp("ray") / "two"
    summary = launch(apply_overrides(get_preset("smoke"), EXACT), out, workers=2, max_failures=0,
                     progress=False)
    return out, summary


@pytest.mark.timeout(240)
def test_two_workers_match_one_process(two_worker_run, tmp_path):
    out, summary = two_worker_run
    assert summary["finished"] and summary["steps"] == 36
    single = tmp_path / "single"
    fit(apply_overrides(get_preset("smoke"), EXACT), single, progress=False)
    a = load_checkpoint(out / "final.pt")["model"]
    b = load_checkpoint(single / "final.pt")["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)  # float summation order
    assert [r["epoch"] for r in _rows(out)] == [1, 2]
    for name in ("best.pt", "final.pt", "summary.md", "learning_curves.png", "schedules.png"):
        assert (out / name).exists(), name
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.timeout(300)
def test_crashed_worker_is_restarted_from_the_last_checkpoint(two_worker_run, tmp_path):
    from adr_scale.train import launch

    reference, _ = two_worker_run
    out = tmp_path / "crash"
    summary = launch(apply_overrides(get_preset("smoke"), EXACT), out, workers=2, max_failures=1,
                     progress=False, fault_at_step=27)  # mid-epoch 2 of 2, on rank 1
    assert (out / "fault_injected").read_text().startswith("worker crashed at step 27")
    assert summary["finished"]
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]  # every epoch exactly once
    assert _without_time(rows) == _without_time(_rows(reference))
    a, b = load_checkpoint(out / "final.pt"), load_checkpoint(reference / "final.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_batch_that_does_not_split_is_refused(tmp_path):
    from adr_scale.config import ConfigError
    from adr_scale.train import launch

    with pytest.raises(ConfigError, match=r"train.batch_size: 64 does not split evenly across 3 "
                                          r"workers; use a multiple of 3, e.g. 63 or 66"):
        launch(get_preset("smoke"), tmp_path / "r", workers=3, progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.timeout(400)
def test_killed_driver_resumes_with_the_same_command(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "adr_scale.train", "--preset", "smoke", "--set", "train.epochs=3",
           "--set", "train.device=cpu", "--out", str(out), "--no-progress"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
    deadline = time.monotonic() + 200
    seen: list[dict] = []
    while time.monotonic() < deadline and len(seen) < 1:
        time.sleep(0.5)
        try:
            seen = _rows(out)
        except (OSError, ValueError):
            pass
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
    first.wait()
    assert len(seen) >= 1, "the first run never finished an epoch"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming after epoch" in done.stdout + done.stderr
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # epochs finished before the kill are carried over, not recomputed (same wall-clock seconds)
    assert rows[:len(seen)] == seen
    assert json.loads((out / "summary.json").read_text())["finished"] is True
