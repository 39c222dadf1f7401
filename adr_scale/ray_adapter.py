"""The Ray Train adapter: the per-worker loop, the epoch report with its checkpoint, the one
TorchTrainer of every launch, the controller callback that keeps a run directory current, the
storage probe and the local Ray. Used by both drivers (`adr_scale.drivers.launch` for a run,
`adr_scale.search.trial` for a trial), importing neither CLI.

Ray is imported here at module level: import this module only once the input has been checked
(the CLIs refuse bad flags, data roots and addresses before importing Ray, `adr_scale.cli`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig, UserCallback
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm.auto import tqdm

from adr_scale.checkpoint import checkpoint_state, load_checkpoint, load_state
from adr_scale.config import ConfigError, from_dict, validate
from adr_scale.data import ArrayDataset, load_splits
from adr_scale.data.mixing import open_synthetic
from adr_scale.engine import EpochEnd, build_state, run_epochs
from adr_scale.interrupt import StopSignals
from adr_scale.run.directory import atomic_write_text
from adr_scale.run.files import (
    DIVERGED_FILE,
    HISTORY_FILE,
    STATE_FILE,
    checkpoint_dir_name,
    checkpoint_dirs,
    copy_from_storage,
    dir_name,
    first_readable,
    older_checkpoint_dirs,
    read_json,
    set_aside_torn_record,
    write_checkpoint_files,
)
from adr_scale.run.lock import TrainingDiverged
from adr_scale.run.outputs import RunOutputs

# ---------------------------------------------------------------------------------------------
# The per-worker loop (runs in every Ray Train worker process)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = validate(from_dict(config["config"], source="train_loop_config"))
    device = ray.train.torch.get_device()
    splits = load_splits(cfg.data)
    state = build_state(cfg, splits.info, len(splits.train), device)
    # This run's own latest checkpoint (a restarted group or driver) or, for a new run, the
    # checkpoint it starts from (a PBT segment continuing its own or another trial's state).
    own = newest_readable(ray.train.get_checkpoint(), config.get("storage_run"))
    path, skipped = None, frozenset()
    if own is not None:  # this run's own: the newest of its checkpoints that loads
        path, ckpt, skipped = own
        load_state(state, ckpt)
    elif config.get("init_checkpoint") is not None:
        path = config["init_checkpoint"].path
        with config["init_checkpoint"].as_directory() as directory:
            load_state(state, load_checkpoint(Path(directory) / STATE_FILE))
    if path is not None and ray.train.get_context().get_world_rank() == 0:
        print(f"resuming after epoch {state.epoch} (step {state.step}) from {path}")
    if config.get("fault_at_step") is not None:
        state.after_step = _fault_injector(config["fault_at_step"], config["fault_marker"])
    train = ArrayDataset(splits.train.images.to(device), splits.train.labels.to(device))
    ctx = ray.train.get_context()
    until = config.get("until_epoch") or state.num_epochs
    if state.history and state.epoch >= until:
        # Restarted after its last epoch (e.g. a Tune trial whose driver died before it recorded
        # the end): announce the final result again, so callbacks and Tune see it.
        ray.train.report(state.history[-1] | {"improved": False, "num_epochs": state.num_epochs,
                                              "total_steps": state.total_steps,
                                              "steps_per_epoch": state.steps_per_epoch})
        return
    synthetic = open_synthetic(cfg, splits.info, ctx.get_world_rank(), ctx.get_world_size(),
                               device=device)
    try:
        run_epochs(state, train, splits.val, partial(_report_epoch, taken=skipped),
                   until_epoch=until, synthetic=synthetic)
    except TrainingDiverged as exc:
        if not config.get("report_divergence"):
            raise
        # Every rank stops at the same check (the flag is summed), so this report is a barrier
        # like the others; returning instead of raising keeps Ray from retrying a run that
        # would diverge again from the same checkpoint.
        ray.train.report({"diverged": str(exc)})


def newest_readable(checkpoint, storage_run: tuple[str, str] | None = None,
                    ) -> tuple[str, dict[str, Any], frozenset[str]] | None:
    """(path, state, names of the newer checkpoints skipped) of this run's newest checkpoint whose
    state.pt loads; None for a run without checkpoints. The candidates: with `storage_run`
    (storage, run name) every checkpoint directory of the run in storage, newest first (a
    stopped driver can leave newer ones than Ray Train's checkpoint manager recorded); else Ray
    Train's `checkpoint` and the older ones beside it. Rank 0 names each unreadable one in one
    line (runfiles.first_readable); ConfigError if none loads."""
    if storage_run is not None:
        fs, candidates = checkpoint_dirs(*storage_run)
        candidates = candidates[::-1]
    elif checkpoint is not None:
        fs = checkpoint.filesystem
        candidates = [checkpoint.path, *older_checkpoint_dirs(fs, checkpoint.path)]
    else:
        return None

    def load(path: str) -> dict[str, Any]:
        with ray.train.Checkpoint(path, filesystem=fs).as_directory() as directory:
            return load_checkpoint(Path(directory) / STATE_FILE)

    found = first_readable(candidates, load, label=lambda p: f"{p}/{STATE_FILE}",
                           where=str(Path(candidates[0]).parent) if candidates else "",
                           warn=ray.train.get_context().get_world_rank() == 0)
    if found is None:
        return None
    k, state = found
    return candidates[k], state, frozenset(dir_name(p) for p in candidates[:k])


def _report_epoch(state, end: EpochEnd, *, taken: frozenset[str] = frozenset()) -> None:
    """Every rank reports (a barrier) after a validated or checkpoint epoch; rank 0 attaches the
    checkpoint (state.pt + history.json) when `end.save`, under a directory name not in `taken`
    (the torn checkpoints a resume skipped). With train.checkpoint_upload=async Ray uploads it on a
    background thread and the next epoch starts at once."""
    if not end.save and "val_robust_acc" not in end.row:
        return  # an epoch with nothing to report (every rank decides alike)
    ckpt = checkpoint_state(state) if end.save else None  # a collective: every rank's RNG state
    metrics = end.row | {"improved": end.improved, "num_epochs": state.num_epochs,
                         "total_steps": state.total_steps, "steps_per_epoch": state.steps_per_epoch}
    if ray.train.get_context().get_world_rank() != 0 or ckpt is None:
        ray.train.report(metrics, checkpoint=None)
        return
    upload = (ray.train.CheckpointUploadMode.ASYNC if state.cfg.train.checkpoint_upload == "async"
              else ray.train.CheckpointUploadMode.SYNC)
    directory = Path(tempfile.mkdtemp(prefix="adr-scale-ckpt-"))  # async: Ray deletes it after upload
    try:
        write_checkpoint_files(directory, ckpt, state.history)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                         checkpoint_dir_name=checkpoint_dir_name(state.epoch, taken),
                         checkpoint_upload_mode=upload)
    finally:
        if upload == ray.train.CheckpointUploadMode.SYNC:
            shutil.rmtree(directory, ignore_errors=True)


def _fault_injector(step: int, marker: str):
    def maybe_crash(state) -> None:
        ctx = ray.train.get_context()
        last_rank = ctx.get_world_rank() == ctx.get_world_size() - 1
        if state.step == step and last_rank and not os.path.exists(marker):
            Path(marker).write_text(f"worker crashed at step {step}\n")
            os._exit(1)  # a real process death: no cleanup, no report

    return maybe_crash


class RunDirectoryCallback(UserCallback):
    """A Ray Train callback that runs in the controller (on the driver's node) and keeps the run
    directory `out` current after every reported checkpoint: metrics, plots, best.pt, final.pt."""

    def __init__(self, out: Path, cfg_dict: dict[str, Any]) -> None:
        self.out = out
        self.outputs = RunOutputs(out, validate(from_dict(cfg_dict)))  # the plot clock starts

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is None:
            if metrics and "diverged" in metrics[0]:
                atomic_write_text(self.out / DIVERGED_FILE, metrics[0]["diverged"])
            return
        row = metrics[0]
        fs, base = checkpoint.filesystem, checkpoint.path
        self.outputs.epoch_end(
            read_json(fs, f"{base}/{HISTORY_FILE}"), improved=row["improved"],
            finished=row["epoch"] == row["num_epochs"], total_steps=row["total_steps"],
            steps_per_epoch=row["steps_per_epoch"],
            write_checkpoint=lambda path: copy_from_storage(fs, f"{base}/{STATE_FILE}", path))


def check_storage_visible(storage: str) -> None:
    """Refuse a node-local storage path on a multi-node cluster: a probe file written here must be
    visible from every alive node (a shared mount passes, /tmp on one node does not)."""
    if "://" in storage:
        return
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) <= 1:
        return
    probe = Path(storage) / f".adr_scale_probe_{uuid.uuid4().hex}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("probe")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        for node in nodes:
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            if not ray.get(sees.options(scheduling_strategy=strategy).remote(str(probe))):
                raise ConfigError(
                    f"--storage-path: {storage!r} is not visible from node "
                    f"{node['NodeManagerAddress']} of this {len(nodes)}-node cluster; use "
                    "s3://..., gs://... or a directory shared by every node")
    finally:
        probe.unlink(missing_ok=True)


class EpochProgress:
    """An epoch bar with ETA in the driver, fed by the run directory's metrics.jsonl (which the
    controller callback rewrites after every epoch)."""

    def __init__(self, out: Path, total_epochs: int, enabled: bool) -> None:
        self.file = out / "metrics.jsonl"
        self.bar = tqdm(total=total_epochs, desc=f"train {out.name}", unit="epoch",
                        disable=not enabled, dynamic_ncols=True)
        self.seen = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(1.0):
            self.refresh()

    def refresh(self) -> None:
        try:
            rows = [json.loads(x) for x in self.file.read_text().splitlines() if x]
        except (OSError, ValueError):
            return
        if self.seen == 0 and rows:  # resumed: count finished epochs without an ETA jump
            self.bar.n = self.bar.last_print_n = len(rows) - 1
            self.seen = len(rows) - 1
        for row in rows[self.seen:]:
            self.bar.update(1)
            self.bar.set_postfix(val_pgd=f"{row['val_robust_acc']:.4f}",
                                 val_clean=f"{row['val_clean_acc']:.4f}")
        self.seen = max(self.seen, len(rows))

    def __enter__(self) -> EpochProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.refresh()
        self.bar.close()


def make_trainer(loop_config: dict[str, Any], *, name: str, storage: str, workers: int,
                 gpus: float, cpus: float, max_failures: int, keep_best: int | None = None,
                 callbacks: list | None = None):
    """The one TorchTrainer of every launch (a run, a Tune trial, a PBT segment): the worker
    loop, `workers` ranks with `cpus` (and `gpus`) each, `max_failures` worker-group restarts
    from the latest checkpoint, and the `keep_best` best checkpoints by validation robust
    accuracy beside the latest (None: the latest only, all a trial needs)."""
    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus > 0 else {})
    if torn := set_aside_torn_record(storage, name):
        print(f"warning: Ray Train's checkpoint record {torn} is unreadable (a kill cut its write "
              f"short); set aside as {Path(torn).name}.torn, Ray Train starts a new one",
              file=sys.stderr, flush=True)
    return Trainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RayRunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1) if keep_best is None else
            CheckpointConfig(num_to_keep=keep_best, checkpoint_score_attribute="val_robust_acc",
                             checkpoint_score_order="max"),
            callbacks=callbacks or []))


class Trainer(TorchTrainer):
    """A TorchTrainer that leaves SIGINT to the driver's StopSignals and keeps its controller.
    Ray Train's own handler (main thread only) aborts the run, then exits 0 or 1 without a
    word while the driver never learns which checkpoints were written."""

    controller = None

    def _register_sigint_handler(self, controller) -> None:
        self.controller = controller


ABORT_TIMEOUT_S = 60  # for the controller to stop the workers after a signal


def abort_run(trainer) -> None:
    """Stop the Train run of an interrupted driver: its controller stops the workers (an upload
    under way is cut short; that checkpoint stays incomplete and a resume skips it) and exits."""
    if getattr(trainer, "controller", None) is None:
        return
    try:
        ray.get(trainer.controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
    except ray.exceptions.RayError:  # the controller exits as it aborts (RayActorError)
        pass


START_ATTEMPTS = 3  # local Ray starts before a driver gives up


def start_local_ray(num_cpus: int | None = None,
                    resources: dict[str, float] | None = None) -> None:
    """Start this driver's own Ray (a search's or a run's) with RAY_ADDRESS set in every worker.

    Ray Train's PlacementGroupCleaner (an actor beside each Train run) removes the run's placement
    group when its controller dies, as it does when Tune stops a trial (ASHA, or the end of a
    trial whose Train run is still closing). It asks the State API, which without RAY_ADDRESS
    finds its cluster by scanning the machine's processes and fails ("Found multiple active Ray
    instances") wherever a second Ray runs: another search, a test run. The cleaner's thread then
    dies, the placement group stays, and the next trial's workers wait for its CPUs for ever
    (Train retries its 60 s start timeout without limit). So the GCS port is chosen here and
    handed to the workers."""
    for attempt in range(1, START_ATTEMPTS + 1):
        with socket.socket() as probe:  # a free port now; Ray binds it a moment later
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        gcs = f"{ray.util.get_node_ip_address()}:{port}"
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        try:
            ray.init(num_cpus=num_cpus, resources=resources,
                     runtime_env={"env_vars": {"RAY_ADDRESS": gcs}})
            return
        except Exception as exc:  # Ray waits a fixed 30 s for its raylet, too short when busy
            if "timed out during startup" not in str(exc) or attempt == START_ATTEMPTS:
                raise
            ray.shutdown()
            print(f"the local Ray did not start within Ray's 30 s (a busy machine); attempt "
                  f"{attempt + 1} of {START_ATTEMPTS}", file=sys.stderr, flush=True)
        finally:
            del os.environ["RAY_GCS_SERVER_PORT"]


def connect(address: str | None, stop: StopSignals | None) -> None:
    """Join the cluster at `address` or start a local Ray (once per process); then take SIGTERM
    back from Ray (its handler kills the local Ray under the blocked driver: SIGABRT, exit 134).
    Only now: every refusal before comes without Ray's import or start (`drivers._launch`)."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True, include_dashboard=None)
        else:
            start_local_ray()
    if stop is not None:
        stop.install()
