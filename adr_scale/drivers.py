"""The drivers of one training run into a run directory: `fit` trains in this process
(`--workers 0`), `launch` on Ray Train through `adr_scale.ray_adapter`, whose import (and Ray's)
waits until every check has passed.

A bad flag, data root, synthetic set, address or run directory is refused here in one line
before Ray is imported or started; a rerun of the same call resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from adr_scale.checkpoint import checkpoint_state, load_checkpoint, load_state
from adr_scale.cli import check_address, check_scaling
from adr_scale.config import RunConfig, to_dict, validate
from adr_scale.data import ArrayDataset, Splits, load_splits, resolve_data
from adr_scale.data.loader import inherit_data
from adr_scale.data.mixing import open_synthetic
from adr_scale.engine import (
    EpochEnd,
    TrainState,
    build_state,
    epoch_line,
    resolve_device,
    run_epochs,
    schedule_length,
)
from adr_scale.interrupt import Interrupted, StopSignals
from adr_scale.run.directory import RunDir, atomic_copy, atomic_torch_save
from adr_scale.run.files import (
    DIVERGED_FILE,
    STATE_FILE,
    checkpoint_dirs,
    copy_from_storage,
    dir_name,
    drop_untracked,
    first_readable,
    incomplete,
    newest_complete,
    stored_checkpoint_config,
)
from adr_scale.run.lock import RunLock, TrainingDiverged, kept_detail
from adr_scale.run.outputs import RunOutputs, catch_up


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


# ---------------------------------------------------------------------------------------------
# In this process (no Ray)


def fit(cfg: RunConfig, out: str | Path, *, until_epoch: int | None = None,
        progress: bool = True, splits: Splits | None = None) -> dict[str, Any]:
    """Train `cfg` in this process into run directory `out`, resuming from its latest checkpoint.

    until_epoch stops after that many epochs (a later call continues). Returns summary.json's dict
    (empty when stopped before the end). A second run on the same `out` is refused (RunLock).
    """
    validate(cfg)
    with RunLock(out):
        return _fit(cfg, RunDir(out), until_epoch, progress, splits)


def newest_readable_checkpoint(run: RunDir) -> tuple[Path, dict[str, Any]] | None:
    """The newest epoch checkpoint that loads; a torn newer one (a full disk, a copy cut short) is
    named on stderr and skipped, so the run resumes one epoch earlier instead of stopping."""
    found = run.checkpoints_newest_first()
    first = first_readable(found, load_checkpoint, label=str, where=str(run.checkpoints))
    return None if first is None else (found[first[0]], first[1])


def catch_up_run(run: RunDir, state: TrainState, rows: list[dict[str, Any]]) -> None:
    """The run directory's files brought to `rows` (report.catch_up); best.pt and final.pt come
    from the epoch checkpoints in OUT/checkpoints."""
    def copy(epoch: int, dst: Path) -> None:
        if run.epoch_checkpoint(epoch).is_file():
            atomic_copy(run.epoch_checkpoint(epoch), dst)

    catch_up(run.path, state.cfg, rows, total_steps=state.total_steps,
             steps_per_epoch=state.steps_per_epoch, copy_checkpoint=copy)


def _fit(cfg: RunConfig, run: RunDir, until_epoch: int | None, progress: bool,
         splits: Splits | None) -> dict[str, Any]:
    out = run.path
    latest = newest_readable_checkpoint(run)
    if latest is not None:  # a resumed run keeps the data statistics and classes it stored
        cfg = inherit_data(cfg, latest[1]["config"])
    splits = splits or load_splits(cfg.data)  # bad roots fail here, before anything is written
    cfg = resolve_data(cfg, splits.info)  # a generic form's classes, shape, stats: into config.yaml
    device = resolve_device(cfg.train.device)
    synthetic = open_synthetic(cfg, splits.info, device=device)
    if latest is not None:  # the checkpoint's own config is the one that counts (config.yaml
        run.check_config(latest[1]["config"], cfg, latest[0].name)  # may be gone or replaced)
    run.prepare(cfg, {"executor": "process"})
    state = build_state(cfg, splits.info, len(splits.train), device)
    if latest is not None:
        load_state(state, latest[1])
        if latest[0] != run.latest_checkpoint():
            print(f"resuming from {latest[0]} (epoch {state.epoch})", file=sys.stderr)
    kept = list(state.history)  # the newest checkpoint's rows: what a signal leaves
    catch_up_run(run, state, kept)  # a stop or crash before the last checkpoint's bookkeeping
    train = ArrayDataset(splits.train.images.to(device), splits.train.labels.to(device))
    bar = tqdm(total=state.total_steps, initial=state.step, desc=f"train {Path(out).name}",
               unit="step", disable=not progress, dynamic_ncols=True)
    outputs = RunOutputs(run.path, cfg)

    def on_epoch_end(state: TrainState, end: EpochEnd) -> None:
        ckpt = checkpoint_state(state) if end.save else None
        if ckpt is not None:
            run.save_epoch(ckpt, state.epoch, cfg.train.keep_checkpoints)
            kept[:] = state.history
        outputs.epoch_end(state.history, improved=end.improved,
                          finished=state.epoch == state.num_epochs,
                          total_steps=state.total_steps, steps_per_epoch=state.steps_per_epoch,
                          write_checkpoint=None if ckpt is None
                          else lambda path: atomic_torch_save(ckpt, path))
        if "val_robust_acc" in end.row:
            bar.write(epoch_line(state, end.row))

    try:
        run_epochs(state, train, splits.val, on_epoch_end, until_epoch=until_epoch, bar=bar,
                   synthetic=synthetic)
    except Interrupted as exc:  # the files then say what the newest checkpoint holds, never more
        catch_up_run(run, state, kept)
        epoch = kept[-1]["epoch"] if kept else 0
        raise Interrupted(exc.signum, kept_detail(epoch, state.num_epochs)) from None
    finally:  # a diverged run's error line is then the last line, not under a live bar
        bar.close()
    if state.epoch < state.num_epochs or not state.history:
        return {}
    return json.loads((run.path / "summary.json").read_text())
