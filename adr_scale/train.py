"""`python -m adr_scale.train`: train one configuration on Ray Train (or in this process).

Examples:
  python -m adr_scale.train --preset smoke --out runs/smoke
  python -m adr_scale.train --preset smoke --workers 2 --out runs/smoke-2w
  python -m adr_scale.train --preset cifar100_resnet18_at_adr --set data.root=/data/cifar \\
      --workers 8 --gpus-per-worker 1 --address auto --storage-path s3://bucket/adr --out runs/c100
  python -m adr_scale.train --from-search runs/search-c100 --workers 8 --gpus-per-worker 1 --out runs/c100-long
  python -m adr_scale.train --preset smoke --workers 0 --out runs/smoke-local   # no Ray at all

Rerunning the same command resumes from the latest checkpoint: run names are deterministic
(the --out directory's name unless --name is given), never timestamps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from adr_scale.cli import OneLineParser
from adr_scale.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    apply_overrides,
    attack_line,
    dump_yaml,
    from_dict,
    get_preset,
    load_yaml,
    paper_text,
    to_dict,
    validate,
)
from adr_scale.interrupt import Interrupted, StopSignals
from adr_scale.run.files import (
    DIVERGED_FILE,
    HISTORY_FILE,
    STATE_FILE,
    checkpoint_dir_name,
    drop_untracked,
    first_readable,
    read_json,
    stored_checkpoint_config,
    write_checkpoint_files,
)
from adr_scale.run.lock import RunLock, TrainingDiverged, kept_detail


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m adr_scale.train", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help="named preset (see --list-presets); default: smoke")
    parser.add_argument("--paper-text", action="store_true",
                        help="with --preset: the paper's stated settings instead of the official "
                        "config's (docs/presets.md lists the differences)")
    source.add_argument("--config", help="YAML config file (a run's config.yaml, a search's best.yaml)")
    source.add_argument("--from-search", metavar="DIR",
                        help="train the best schedule of a finished search (DIR/best.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one field, e.g. adr.tau_start=1.5 "
                        "(repeatable)")
    parser.add_argument("--out", help="run directory (created, or resumed if it exists)")
    parser.add_argument("--name", help="Ray Train run name (default: the --out directory's name)")
    parser.add_argument("--workers", type=int, default=1,
                        help="Ray Train workers (DDP ranks); 0 trains in this process without Ray")
    parser.add_argument("--gpus-per-worker", type=float, default=0,
                        help="GPUs per worker; 0 trains on CPUs with gloo, >0 on GPUs with NCCL")
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--address", help="join a running Ray cluster ('auto' or host:port); "
                        "default: start a local Ray")
    parser.add_argument("--storage-path", help="checkpoint storage: a local directory, s3://, gs:// "
                        "or a mount shared by every node (default: OUT/ray)")
    parser.add_argument("--max-failures", type=int, default=3,
                        help="worker-group restarts from the latest checkpoint before giving up")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    parser.add_argument("--list-presets", action="store_true", help="list preset names and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Test hook: the last rank exits (os._exit) once at this step, as a crashed worker would.
    parser.add_argument("--fault-at-step", type=int, help=argparse.SUPPRESS)
    return parser


def resolve_config(args: argparse.Namespace) -> RunConfig:
    if args.from_search:
        best = Path(args.from_search) / "best.yaml"
        if not best.is_file():
            raise ConfigError(f"--from-search: {str(best)!r} does not exist; "
                              "point it at a finished search's output directory")
        cfg = load_yaml(best)
    elif args.config:
        cfg = load_yaml(args.config)
    else:
        cfg = (paper_text if args.paper_text else get_preset)(args.preset or "smoke")
    if args.paper_text and (args.from_search or args.config):
        raise ConfigError("--paper-text: applies to --preset only; allowed: --preset NAME "
                          "--paper-text")
    return apply_overrides(cfg, args.overrides)


def check_scaling(cfg: RunConfig, workers: int, gpus: float, max_failures: int) -> None:
    if workers < 0:
        raise ConfigError(f"--workers: invalid value {workers}; allowed: an integer >= 0")
    if gpus < 0:
        raise ConfigError(f"--gpus-per-worker: invalid value {gpus}; allowed: a number >= 0")
    if max_failures < 0:
        raise ConfigError(f"--max-failures: invalid value {max_failures}; allowed: an integer >= 0")
    batch = cfg.train.batch_size
    if workers > 1 and batch % workers:
        lower, upper = batch - batch % workers, batch + workers - batch % workers
        raise ConfigError(f"train.batch_size: {batch} does not split evenly across {workers} "
                          f"workers; use a multiple of {workers}, e.g. "
                          + (f"{lower} or {upper}" if lower else f"{upper}"))
    if cfg.train.sync_batchnorm and workers > 1 and gpus == 0:
        raise ConfigError("train.sync_batchnorm: true needs GPUs (PyTorch's SyncBatchNorm has no "
                          "CPU kernel); set --gpus-per-worker or train.sync_batchnorm=false")


BN_PER_RANK_MIN = 64  # images per rank below which per-rank BatchNorm statistics get noisy
BN_FREE_ARCHS = ("tiny_nonorm",)  # architectures without BatchNorm


def batchnorm_note(cfg: RunConfig, workers: int, gpus: float) -> str | None:
    """A one-line note when DDP ranks normalise small shares of the batch, else None.

    Each rank's BatchNorm sees only batch / workers images (16 for batch 128 on 8 GPUs), not the
    paper's single-GPU 128: noisier statistics and another effective regularisation. SyncBatchNorm
    restores whole-batch statistics at one all-reduce per BN layer and forward (README).
    """
    per_rank = cfg.train.batch_size // max(workers, 1)
    if (workers <= 1 or gpus <= 0 or cfg.train.sync_batchnorm or per_rank >= BN_PER_RANK_MIN
            or cfg.model.arch in BN_FREE_ARCHS):
        return None
    return (f"train.batch_size={cfg.train.batch_size} on {workers} workers leaves {per_rank} "
            f"images per rank for BatchNorm statistics (the paper normalises over the whole "
            f"batch on one GPU); consider --set train.sync_batchnorm=true")


# ---------------------------------------------------------------------------------------------
# The per-worker loop (runs in every Ray Train worker process)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from adr_scale.checkpoint import load_checkpoint
    from adr_scale.data import ArrayDataset, load_splits
    from adr_scale.engine import build_state, load_state, open_synthetic, run_epochs

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
    import ray.train

    from adr_scale.checkpoint import load_checkpoint
    from adr_scale.run.files import checkpoint_dirs, dir_name, older_checkpoint_dirs

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


def _report_epoch(state, row: dict[str, Any], improved: bool, save: bool, *,
                  taken: frozenset[str] = frozenset()) -> None:
    """Every rank reports (a barrier) after a validated or checkpoint epoch; rank 0 attaches the
    checkpoint (state.pt + history.json) when `save`, under a directory name not in `taken` (the
    torn checkpoints a resume skipped). With train.checkpoint_upload=async Ray uploads it on a
    background thread and the next epoch starts at once."""
    import ray.train

    from adr_scale.engine import checkpoint_state

    if not save and "val_robust_acc" not in row:
        return  # an epoch with nothing to report (every rank decides alike)
    ckpt = checkpoint_state(state) if save else None  # a collective: every rank's RNG state
    metrics = row | {"improved": improved, "num_epochs": state.num_epochs,
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
    import ray.train

    def maybe_crash(state) -> None:
        ctx = ray.train.get_context()
        last_rank = ctx.get_world_rank() == ctx.get_world_size() - 1
        if state.step == step and last_rank and not os.path.exists(marker):
            Path(marker).write_text(f"worker crashed at step {step}\n")
            os._exit(1)  # a real process death: no cleanup, no report

    return maybe_crash


# ---------------------------------------------------------------------------------------------
# The driver side


def _make_callback(out: Path, cfg_dict: dict[str, Any]):
    """A Ray Train callback that runs in the controller (on the driver's node) and keeps the run
    directory current after every reported checkpoint: metrics, plots, best.pt, final.pt."""
    from ray.train import UserCallback

    from adr_scale.run.outputs import RunOutputs

    class RunDirectoryCallback(UserCallback):
        def __init__(self) -> None:
            self.outputs = RunOutputs(out, validate(from_dict(cfg_dict)))  # the plot clock starts

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if checkpoint is None:
                if metrics and "diverged" in metrics[0]:
                    from adr_scale.run.directory import atomic_write_text

                    atomic_write_text(out / DIVERGED_FILE, metrics[0]["diverged"])
                return
            row = metrics[0]
            fs, base = checkpoint.filesystem, checkpoint.path
            self.outputs.epoch_end(
                read_json(fs, f"{base}/{HISTORY_FILE}"), improved=row["improved"],
                finished=row["epoch"] == row["num_epochs"], total_steps=row["total_steps"],
                steps_per_epoch=row["steps_per_epoch"],
                write_checkpoint=lambda path: _copy_from_storage(fs, f"{base}/{STATE_FILE}", path))

    return RunDirectoryCallback()


def _copy_from_storage(fs, src: str, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    with fs.open_input_stream(src) as fin, tmp.open("wb") as fout:
        while chunk := fin.read(1 << 24):
            fout.write(chunk)
    os.replace(tmp, dst)


def check_storage_visible(storage: str) -> None:
    """Refuse a node-local storage path on a multi-node cluster: a probe file written here must be
    visible from every alive node (a shared mount passes, /tmp on one node does not)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
        from tqdm.auto import tqdm

        self.file = out / "metrics.jsonl"
        self.bar = tqdm(total=total_epochs, desc=f"train {out.name}", unit="epoch",
                        disable=not enabled, dynamic_ncols=True)
        self.seen = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import json

        while not self.stop.wait(1.0):
            self.refresh(json)

    def refresh(self, json) -> None:
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
        import json

        self.stop.set()
        self.thread.join()
        self.refresh(json)
        self.bar.close()


def make_trainer(loop_config: dict[str, Any], *, name: str, storage: str, workers: int,
                 gpus: float, cpus: float, max_failures: int, keep_best: int | None = None,
                 callbacks: list | None = None):
    """The one TorchTrainer of every launch (a run, a Tune trial, a PBT segment): the worker
    loop, `workers` ranks with `cpus` (and `gpus`) each, `max_failures` worker-group restarts
    from the latest checkpoint, and the `keep_best` best checkpoints by validation robust
    accuracy beside the latest (None: the latest only, all a trial needs)."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig

    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus > 0 else {})
    return _trainer_class()(
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


def _trainer_class():
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        """A TorchTrainer that leaves SIGINT to the driver's StopSignals and keeps its controller.
        Ray Train's own handler (main thread only) aborts the run, then exits 0 or 1 without a
        word while the driver never learns which checkpoints were written (issue 25)."""

        controller = None

        def _register_sigint_handler(self, controller) -> None:
            self.controller = controller

    return Trainer


ABORT_TIMEOUT_S = 60  # for the controller to stop the workers after a signal


def abort_run(trainer) -> None:
    """Stop the Train run of an interrupted driver: its controller stops the workers (an upload
    under way is cut short; that checkpoint stays incomplete and a resume skips it) and exits."""
    import ray

    if getattr(trainer, "controller", None) is None:
        return
    try:
        ray.get(trainer.controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
    except ray.exceptions.RayError:  # the controller exits as it aborts (RayActorError)
        pass


CONNECT_TIMEOUT_S = 3.0  # for a Ray head's GCS port to accept a TCP connection


def check_address(address: str) -> None:
    """Refuse, in one line and within seconds, a Ray address where no cluster answers (`ray.init`
    would retry it for minutes): host:port (or ray://host:port) must accept a TCP connection;
    'auto' must find a running cluster (RAY_ADDRESS or the last `ray start` on this machine)
    that does. Writes nothing. For the train and tune drivers, before anything is written."""
    import socket

    target = address.removeprefix("ray://")
    if address == "auto":
        target = _auto_address()
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address: invalid value {address!r}; allowed: auto or host:port "
                          "(e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"--address: nothing answers at {host}:{port} ({why}); start the cluster "
                          "(`ray start --head`) or leave --address out to start a local Ray"
                          ) from None


def _auto_address() -> str:
    """host:port of the cluster `ray.init(address="auto")` would join, or a ConfigError."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
        why = "no RAY_ADDRESS, no `ray start`"
    except ConnectionError as exc:  # e.g. several clusters run here and none was named
        found, why = None, (str(exc).strip().splitlines() or ["?"])[0][:120]
    if not found:
        raise ConfigError(f"--address: auto finds no Ray cluster to join on this machine ({why});"
                          " name one as host:port, start one with `ray start --head`, or leave "
                          "--address out to start a local Ray")
    return found


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
    import socket

    import ray

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
    from adr_scale.data import load_splits, resolve_data
    from adr_scale.engine import open_synthetic, schedule_length

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
    _connect(address, stop)
    check_storage_visible(storage)
    loop_config: dict[str, Any] = {"config": to_dict(cfg), "report_divergence": True,
                                   "storage_run": (storage, run_name)}
    if fault_at_step is not None:
        loop_config |= {"fault_at_step": fault_at_step,
                        "fault_marker": str((out / "fault_injected").resolve())}
    trainer = make_trainer(
        loop_config, name=run_name, storage=storage, workers=workers, gpus=gpus_per_worker,
        cpus=cpus_per_worker, max_failures=max_failures, keep_best=cfg.train.keep_checkpoints,
        callbacks=[_make_callback(out.resolve(), to_dict(cfg))])
    ray_call = stop.translated if stop else nullcontext  # a signal in Ray's blocking calls
    try:
        with EpochProgress(out, -(-total // spe), progress), ray_call():
            trainer.fit()
    except Interrupted as exc:
        with ray_call():
            abort_run(trainer)
        kept = catch_up_storage(out, cfg, storage, run_name, spe, total)
        raise Interrupted(exc.signum, kept_detail(kept, -(-total // spe))) from None
    drop_untracked(storage, run_name)
    return _outcome(out)


def ray_location(out: Path, storage_path: str | None, name: str | None) -> tuple[str, str]:
    """(storage, run name) of a Ray run directory: OUT/ray and OUT's name unless given."""
    return storage_path or str((out / "ray").resolve()), name or out.resolve().name


def _prepare_run_dir(cfg: RunConfig, out: Path, storage: str, run_name: str,
                     storage_path: str | None) -> None:
    from adr_scale.run.directory import RunDir

    run = RunDir(out)
    stored = stored_checkpoint_config(storage, run_name)
    if stored is not None:  # the checkpoint's own config counts (config.yaml may be gone)
        run.check_config(stored[1], cfg, f"Ray checkpoint {stored[0]}")
    run.prepare(cfg, {"executor": "ray", "storage": storage_path or "default", "name": run_name})
    (out / DIVERGED_FILE).unlink(missing_ok=True)


def _connect(address: str | None, stop: StopSignals | None) -> None:
    """Join the cluster at `address` or start a local Ray (once per process); then take SIGTERM
    back from Ray (its handler kills the local Ray under the blocked driver: SIGABRT, exit 134)."""
    import ray  # only now: every refusal before comes without Ray's import or start

    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True, include_dashboard=None)
        else:
            start_local_ray()
    if stop is not None:
        stop.install()


def catch_up_storage(out: Path, cfg: RunConfig, storage: str, run_name: str, spe: int,
                     total: int) -> int:
    """The run directory brought to the newest checkpoint completely in storage, recorded by Ray
    Train or not (report.catch_up); returns its epoch (0: none)."""
    from adr_scale.run.files import checkpoint_dirs, dir_name, incomplete, newest_complete
    from adr_scale.run.outputs import catch_up

    found = newest_complete(storage, run_name)
    rows = found[1] if found else []
    fs, dirs = checkpoint_dirs(storage, run_name)

    def copy(epoch: int, dst: Path) -> None:
        same = [d for d in reversed(dirs) if dir_name(d).startswith(f"epoch-{epoch:04d}")
                and incomplete(fs, d) is None]  # epoch-0003-r01 before epoch-0003
        if same:
            _copy_from_storage(fs, f"{same[0]}/{STATE_FILE}", dst)

    catch_up(out, cfg, rows, total_steps=total, steps_per_epoch=spe, copy_checkpoint=copy)
    return rows[-1]["epoch"] if rows else 0


def _outcome(out: Path) -> dict[str, Any]:
    """summary.json's dict after fit ({} before a first validation); a divergence's line raised."""
    import json

    diverged = out / DIVERGED_FILE
    if diverged.exists():
        message = diverged.read_text()
        diverged.unlink()
        raise TrainingDiverged(message)
    summary_file = out / "summary.json"
    return json.loads(summary_file.read_text()) if summary_file.exists() else {}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print("\n".join(sorted(PRESETS)))
        return 0
    with StopSignals() as stop:
        try:
            return _train(args, stop)
        except Interrupted as exc:  # no detail: before training, or a second signal meanwhile
            detail = exc.detail or "the run directory keeps its latest checkpoint, if any"
            print(f"interrupted ({exc}): {detail}; rerun the same command to resume",
                  file=sys.stderr)
            return exc.exit_code


def _train(args: argparse.Namespace, stop: StopSignals) -> int:
    try:
        cfg = resolve_config(args)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        if not args.out:
            raise ConfigError("--out: missing; name the run directory, e.g. --out runs/smoke")
        check_scaling(cfg, args.workers, args.gpus_per_worker, args.max_failures)
        note = batchnorm_note(cfg, args.workers, args.gpus_per_worker)
        if note:  # once per run, before anything starts
            print(f"note: {note}", file=sys.stderr)
        print(attack_line(cfg), flush=True)
        out = Path(args.out)
        if args.workers == 0:
            from adr_scale.engine import fit  # torch is imported only when there is work to do

            summary = fit(cfg, out, progress=not args.no_progress)
        else:
            summary = launch(cfg, out, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                             cpus_per_worker=args.cpus_per_worker, address=args.address,
                             storage_path=args.storage_path, name=args.name,
                             max_failures=args.max_failures, progress=not args.no_progress,
                             fault_at_step=args.fault_at_step, stop=stop)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:  # one line, exit 1: the input was valid, the run failed
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not summary.get("finished"):
        print(f"run stopped before its last epoch; rerun the same command to resume ({args.out})")
        return 1
    print(f"best epoch {summary['best_epoch']}: val robust {summary['best_val_robust_acc']:.4f} "
          f"clean {summary['best_val_clean_acc']:.4f}; final: robust "
          f"{summary['final_val_robust_acc']:.4f} clean {summary['final_val_clean_acc']:.4f}; "
          f"run directory {args.out} (summary.md, learning_curves.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
