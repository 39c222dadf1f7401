"""The drivers of one training run into a run directory: `launch` trains on Ray Train through
`adr_scale.ray_adapter`, whose import (and Ray's) waits until every check has passed.

A bad flag, data root, synthetic set, address or run directory is refused here in one line
before Ray is imported or started; a rerun of the same call resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from adr_scale.cli import check_address, check_scaling
from adr_scale.config import RunConfig, to_dict
from adr_scale.data import load_splits, resolve_data
from adr_scale.data.mixing import open_synthetic
from adr_scale.engine import schedule_length
from adr_scale.interrupt import Interrupted, StopSignals
from adr_scale.run.directory import RunDir
from adr_scale.run.files import (
    DIVERGED_FILE,
    STATE_FILE,
    checkpoint_dirs,
    copy_from_storage,
    dir_name,
    drop_untracked,
    incomplete,
    newest_complete,
    stored_checkpoint_config,
)
from adr_scale.run.lock import RunLock, TrainingDiverged, kept_detail
from adr_scale.run.outputs import catch_up


def launch(cfg: RunConfig, out: Path, **options: Any) -> dict[str, Any]:
    """Train `cfg` on Ray Train (options: see `_launch`) holding the lock on `out`."""
    with RunLock(out):  # one writer per run directory
        return _launch(cfg, out, **options)


def _launch(cfg: RunConfig, out: Path, *, workers: int, gpus_per_worker: float = 0,
            cpus_per_worker: float = 1, address: str | None = None,
            storage_path: str | None = None, name: str | None = None, max_failures: int = 3,
            progress: bool = True, fault_at_step: int | None = None,
            stop: StopSignals | None = None) -> dict[str, Any]:
    """Train `cfg` on Ray Train with `workers` ranks; the run directory `out` is kept current.
    Under `stop` (the CLI's StopSignals) a signal aborts the run, brings the run directory to the
    newest checkpoint in storage and raises Interrupted saying which epoch it holds."""
    check_scaling(cfg, workers, gpus_per_worker, max_failures)
    if address:
        check_address(address)
    splits = load_splits(cfg.data)  # a bad root fails here, before anything is written
    cfg = resolve_data(cfg, splits.info)  # a generic form's classes and stats, for every worker
    # mixing sizes and the manifest here; the workers build the node's decoded cache
    open_synthetic(cfg, splits.info, 0, max(workers, 1), check_only=True,
                   device="cuda" if gpus_per_worker > 0 else "cpu")
    storage, run_name = ray_location(out, storage_path, name)
    _prepare_run_dir(cfg, out, storage, run_name, storage_path)
    spe, total = schedule_length(cfg, len(splits.train))
    catch_up_storage(out, cfg, storage, run_name, spe, total)  # a resume after a stop or crash
    from adr_scale import ray_adapter  # only now: every refusal above comes without Ray

    ray_adapter.connect(address, stop)
    ray_adapter.check_storage_visible(storage)
    loop_config: dict[str, Any] = {"config": to_dict(cfg), "report_divergence": True,
                                   "storage_run": (storage, run_name)}
    if fault_at_step is not None:
        loop_config |= {"fault_at_step": fault_at_step,
                        "fault_marker": str((out / "fault_injected").resolve())}
    trainer = ray_adapter.make_trainer(
        loop_config, name=run_name, storage=storage, workers=workers, gpus=gpus_per_worker,
        cpus=cpus_per_worker, max_failures=max_failures, keep_best=cfg.train.keep_checkpoints,
        callbacks=[ray_adapter.RunDirectoryCallback(out.resolve(), to_dict(cfg))])
    ray_call = stop.translated if stop else nullcontext  # a signal in Ray's blocking calls
    try:
        with ray_adapter.EpochProgress(out, -(-total // spe), progress), ray_call():
            trainer.fit()
    except Interrupted as exc:
        with ray_call():
            ray_adapter.abort_run(trainer)
        kept = catch_up_storage(out, cfg, storage, run_name, spe, total)
        raise Interrupted(exc.signum, kept_detail(kept, -(-total // spe))) from None
    drop_untracked(storage, run_name)
    return _outcome(out)


def ray_location(out: Path, storage_path: str | None, name: str | None) -> tuple[str, str]:
    """(storage, run name) of a Ray run directory: OUT/ray and OUT's name unless given."""
    return storage_path or str((out / "ray").resolve()), name or out.resolve().name


def _prepare_run_dir(cfg: RunConfig, out: Path, storage: str, run_name: str,
                     storage_path: str | None) -> None:
    run = RunDir(out)
    stored = stored_checkpoint_config(storage, run_name)
    if stored is not None:  # the checkpoint's own config counts (config.yaml may be gone)
        run.check_config(stored[1], cfg, f"Ray checkpoint {stored[0]}")
    run.prepare(cfg, {"executor": "ray", "storage": storage_path or "default", "name": run_name})
    (out / DIVERGED_FILE).unlink(missing_ok=True)


def catch_up_storage(out: Path, cfg: RunConfig, storage: str, run_name: str, spe: int,
                     total: int) -> int:
    """The run directory brought to the newest checkpoint completely in storage, recorded by Ray
    Train or not (report.catch_up); returns its epoch (0: none)."""
    found = newest_complete(storage, run_name)
    rows = found[1] if found else []
    fs, dirs = checkpoint_dirs(storage, run_name)

    def copy(epoch: int, dst: Path) -> None:
        same = [d for d in reversed(dirs) if dir_name(d).startswith(f"epoch-{epoch:04d}")
                and incomplete(fs, d) is None]  # epoch-0003-r01 before epoch-0003
        if same:
            copy_from_storage(fs, f"{same[0]}/{STATE_FILE}", dst)

    catch_up(out, cfg, rows, total_steps=total, steps_per_epoch=spe, copy_checkpoint=copy)
    return rows[-1]["epoch"] if rows else 0


def _outcome(out: Path) -> dict[str, Any]:
    """summary.json's dict after fit ({} before a first validation); a divergence's line raised."""
    diverged = out / DIVERGED_FILE
    if diverged.exists():
        message = diverged.read_text()
        diverged.unlink()
        raise TrainingDiverged(message)
    summary_file = out / "summary.json"
    return json.loads(summary_file.read_text()) if summary_file.exists() else {}
