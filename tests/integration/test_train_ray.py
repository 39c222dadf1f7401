"""Ray Train on a local CPU cluster: 2 workers == 1 process, a crashed worker, batch splitting."""

import json
from pathlib import Path

import pytest
import torch

from adr_scale.checkpoint import load_checkpoint
from adr_scale.config import apply_overrides, get_preset
from adr_scale.drivers import fit

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# No randomness inside a step (no augmentation, no attack, no BatchNorm), so 2 ranks on halves of
# the same global batch must give the weights of one process on the whole batch.
# Validation (PGD-1 here instead of PGD-10) draws from its own RNG stream and never changes the
# weights: PGD-10 validation is ~2/3 of these epochs, PGD-1 keeps the metrics rows at ~1/3 the cost.
EXACT = ["train.device=cpu", "train.method=standard", "adr.enabled=false", "model.arch=tiny_nonorm",
         "data.crop_padding=0", "data.flip=false", "train.epochs=2", "attack.eval_steps=1"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _without_time(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from adr_scale.ray_adapter import start_local_ray

    start_local_ray(4)  # RAY_ADDRESS in its workers: Train's cleaner works beside another Ray
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, tmp_path_factory):
    from adr_scale.drivers import launch

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
    from adr_scale.drivers import launch

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
    from adr_scale.drivers import launch

    with pytest.raises(ConfigError, match=r"train.batch_size: 64 does not split evenly across 3 "
                                          r"workers; use a multiple of 3, e.g. 63 or 66"):
        launch(get_preset("smoke"), tmp_path / "r", workers=3, progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.timeout(240)
def test_diverged_ray_run_stops_once_with_one_line(ray_cluster, tmp_path):
    """On Ray: the workers report the divergence instead of raising, so Ray does
    not restart them (max_failures=3 would rerun a run that diverges again) and nothing is saved."""
    from adr_scale.drivers import launch
    from adr_scale.run.lock import TrainingDiverged

    cfg = apply_overrides(get_preset("smoke"), ["train.device=cpu", "optim.lr=1e6",
                                                "train.log_every=2"])
    # a worker that raised would be restarted 3 times and end in Ray's TrainingFailedError, not
    # in the driver's TrainingDiverged read from the report
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 6 \(epoch 1\): loss "
                                               r"nan, lr 3.333e\+05"):
        launch(cfg, tmp_path / "nan", workers=2, max_failures=3, progress=False)
    assert not any((tmp_path / "nan" / n).exists() for n in ("best.pt", "final.pt", ".diverged"))


def test_ray_run_dir_refuses_another_config_and_the_in_process_path(two_worker_run):
    """On Ray: the Ray checkpoint's config counts without config.yaml, and
    --workers 0 on a Ray run directory is refused before anything is written."""
    from adr_scale.config import ConfigError
    from adr_scale.drivers import launch

    out, _ = two_worker_run
    (out / "config.yaml").unlink()
    other = apply_overrides(get_preset("smoke"), [*EXACT, "optim.lr=0.05"])
    best = (out / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"another config \(differs in optim.lr\) according to "
                                          r"its Ray checkpoint epoch-0002"):
        launch(other, out, workers=2, progress=False)
    with pytest.raises(ConfigError, match=r"--workers: .* was trained on Ray \(--workers >= 1\)"):
        fit(apply_overrides(get_preset("smoke"), EXACT), out, progress=False)
    assert (out / "best.pt").read_bytes() == best and not (out / "checkpoints").exists()
