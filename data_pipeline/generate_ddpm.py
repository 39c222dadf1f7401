"""python -m data_pipeline.generate_ddpm: sample a diffusers DDPM into labelled WebDataset shards.

Each shard is one Ray task (a local Ray is started when there is no --address). The driver checks
every flag before anything is written, then resumes: a shard whose file matches its manifest row is
never touched, everything else is generated again from the same (seed, index) noise. Shards are
written under a temporary name and renamed when complete, so an interrupted run leaves no partial
shard; the manifest is rewritten (atomically) after each finished shard.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from adr_scale.config import ConfigError
from adr_scale.interrupt import Interrupted, StopSignals
from data_pipeline.cli import Parser, positive_int, run_main
from data_pipeline.diffusion import (
    DEFAULT_DDIM_STEPS,
    MAX_ROUNDS,
    PRECISIONS,
    SCHEDULERS,
    GenerateSpec,
    Labeler,
    image_shape_of,
    locate_model,
    model_digest,
    produce_shard,
    shard_task,
    task_device,
)
from data_pipeline.progress import ProgressCounter
from data_pipeline.shards import (
    FORMAT,
    Manifest,
    make_row,
    open_output,
    remove_stale_temporaries,
    scan_shard,
    sha256_file,
    shard_name,
    verified,
    write_manifest,
)

KIND = "generate_ddpm"
# A custom resource that only the 8-GPU node type declares (cluster/gpu.yaml, one unit per GPU):
# where the cluster has it, each task asks for as much of it as of GPUs, so generation lands on
# those nodes and not on the 1-GPU search nodes.
GENERATE_RESOURCE = "generate_gpu"
# Identity fields older directories do not record, with the value their code had: noise was drawn
# by CPU generators (on any device) and the UNet ran in float32.
LEGACY_IDENTITY = {"noise_device": "cpu", "precision": "fp32"}


def parse_args(argv: list[str] | None):
    p = Parser(prog="python -m data_pipeline.generate_ddpm",
               description="Sample a diffusers UNet2DModel (DDPM or DDIM), label the images with an "
                           "adr-scale checkpoint (or the model's own classes) and write WebDataset "
                           "shards plus manifest.parquet. Rerun the same command to resume.",
               example="python -m data_pipeline.generate_ddpm --model google/ddpm-cifar10-32 "
                       "--num-images 1000000 --out shards/c10-ddpm --labeler runs/c10-std/best.pt "
                       "--scheduler ddim --steps 100 --balance --gpus-per-task 1")
    p.add_argument("--model", required=True,
                   help="diffusers pipeline directory or hub id (UNet2DModel + scheduler); a "
                        "class-conditional UNet (num_class_embeds) labels its own images")
    p.add_argument("--num-images", type=positive_int, required=True, help="images to keep")
    p.add_argument("--out", required=True, help="output directory (created; reused to resume)")
    p.add_argument("--scheduler", default="ddpm", help="ddpm (ancestral) or ddim (eta = 0)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"sampling steps (default: all training steps for ddpm, "
                        f"{DEFAULT_DDIM_STEPS} for ddim)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per UNet forward")
    p.add_argument("--shard-size", type=positive_int, default=10000, help="images per shard")
    p.add_argument("--seed", type=int, default=0, help="noise of image i comes from (seed, i)")
    p.add_argument("--labeler", default=None,
                   help="adr-scale checkpoint that labels the images (EMA weights if trained with "
                        "train.wa); required for unconditional models")
    p.add_argument("--balance", action="store_true",
                   help="keep the most confident images of every class so that each shard holds "
                        "equal classes (more images are generated than kept; see the manifest)")
    p.add_argument("--oversample", type=float, default=1.0,
                   help="--balance: generate until every class has this many times its share "
                        "(1 = only what the rarest class needs)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs per shard task (default: 1 if the Ray cluster has GPUs, else 0; "
                        "printed). > 0 samples on CUDA with CUDA noise, 0 on the CPU: the two "
                        "give different images, so a directory keeps the one it started with")
    p.add_argument("--precision", choices=list(PRECISIONS), default=None,
                   help="the UNet's autocast dtype (default: bf16 on GPUs, fp32 on the CPU); the "
                        "sampler's arithmetic stays fp32. Part of the directory's identity")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC UNet weights and inputs (default: on with GPUs); rounding only")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN time its convolution algorithms once per task (default: on); "
                        "--no-cudnn-benchmark makes reruns on the same GPU type byte-identical")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def build_spec(args, gpus_per_task: float | None = None) -> GenerateSpec:
    """Check every flag and read the model and labeller configs; writes nothing.

    gpus_per_task: the resolved --gpus-per-task (the driver looks at the Ray cluster when the flag
    is not given); None takes the flag, or 0 (the CPU) without one."""
    if args.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler: {args.scheduler!r} is not a scheduler; allowed: "
                          + ", ".join(SCHEDULERS))
    if args.gpus_per_task is not None and args.gpus_per_task < 0:
        raise ConfigError(f"--gpus-per-task: {args.gpus_per_task} is negative; allowed: a number >= 0")
    if not 1.0 <= args.oversample <= MAX_ROUNDS / 4:
        raise ConfigError(f"--oversample: {args.oversample} is out of range; allowed: a number "
                          f"in [1, {MAX_ROUNDS // 4}]")
    sub, unet_cfg, sched_cfg = locate_model(args.model)
    shape = image_shape_of(unet_cfg)
    if unet_cfg["out_channels"] != shape[0] or shape[0] not in (1, 3):
        raise ConfigError(f"--model: {args.model!r} maps {shape[0]} to {unet_cfg['out_channels']} "
                          "channels; allowed: a pixel-space UNet with 1 or 3 channels in and out")
    train_steps = sched_cfg.get("num_train_timesteps", 1000)
    steps = args.steps or (train_steps if args.scheduler == "ddpm" else DEFAULT_DDIM_STEPS)
    if steps > train_steps:
        raise ConfigError(f"--steps: {steps} exceeds the model's {train_steps} training steps; "
                          f"allowed: an integer in [1, {train_steps}]")
    conditional = unet_cfg.get("num_class_embeds") is not None
    labeler = _check_labeler(args, shape, conditional, unet_cfg.get("num_class_embeds"))
    num_classes = unet_cfg["num_class_embeds"] if conditional else labeler.num_classes
    if args.balance:
        for flag, value in (("--num-images", args.num_images), ("--shard-size", args.shard_size)):
            if value % num_classes:
                raise ConfigError(f"{flag}: {value} is not a multiple of the {num_classes} classes; "
                                  "allowed: a multiple of the class count with --balance")
    return GenerateSpec(
        model=args.model, model_sha256=model_digest(args.model, sub), scheduler=args.scheduler,
        steps=steps, seed=args.seed,
        shard_size=args.shard_size, num_images=args.num_images, batch_size=args.batch_size,
        labeler=args.labeler, labeler_sha256=sha256_file(args.labeler) if args.labeler else None,
        balance=args.balance, oversample=args.oversample if args.balance else 1.0,
        num_classes=num_classes, conditional=conditional, image_shape=shape,
        **placement(args, args.gpus_per_task if gpus_per_task is None else gpus_per_task))


def placement(args, gpus_per_task: float | None) -> dict[str, Any]:
    """Device-dependent spec fields. bf16 is the GPU default: tensor-core speed like fp16, but
    float32's exponent range, so no overflow can turn an image into NaN at 1M samples; the
    sampler itself (scheduler arithmetic, noise) stays fp32 either way."""
    gpu = (gpus_per_task or 0) > 0
    return {"noise_device": "cuda" if gpu else "cpu",
            "precision": args.precision or ("bf16" if gpu else "fp32"),
            "channels_last": gpu if args.channels_last is None else args.channels_last,
            "cudnn_benchmark": args.cudnn_benchmark}


def _check_labeler(args, shape, conditional: bool, num_class_embeds: int | None) -> Labeler | None:
    if args.labeler is None:
        if not conditional:
            raise ConfigError(f"--labeler: required: {args.model!r} is unconditional (no "
                              "num_class_embeds); allowed: an adr-scale checkpoint, e.g. a "
                              "train.method=standard run's best.pt")
        if args.balance:
            raise ConfigError("--balance: needs --labeler to rank images by confidence; allowed: "
                              "--balance with --labeler, or neither (a conditional model is "
                              "balanced by construction)")
        return None
    try:
        labeler = Labeler(args.labeler, torch.device("cpu"))
    except FileNotFoundError:
        raise ConfigError(f"--labeler: {args.labeler!r} does not exist; allowed: an adr-scale "
                          "checkpoint file") from None
    if labeler.image_shape != shape:
        raise ConfigError(f"--labeler: {args.labeler} classifies {labeler.dataset} images "
                          f"{labeler.image_shape}, the model makes {shape}; allowed: a labeller "
                          "trained on images of the model's shape (C, H, W)")
    if conditional and labeler.num_classes != num_class_embeds:
        raise ConfigError(f"--labeler: {args.labeler} has {labeler.num_classes} classes, the model "
                          f"{num_class_embeds}; allowed: a labeller with the model's classes")
    return labeler


# ---------------------------------------------------------------------------------------------
# Resume


def _meta(spec: GenerateSpec) -> dict[str, Any]:
    return {"format": FORMAT, "kind": KIND, "num_shards": spec.num_shards,
            "num_images": spec.num_images, "num_classes": spec.num_classes,
            "image_shape": list(spec.image_shape), "spec": spec.identity(),
            "batch_size": spec.batch_size, "channels_last": spec.channels_last}


def check_resume(spec: GenerateSpec, out: Path, skip: tuple[str, ...] = ()) -> Manifest | None:
    """The directory's manifest if `spec` may continue it (None: a new directory); raises a
    one-line error otherwise. Reads the manifest only, so main runs it before Ray starts, with
    `skip` = the fields that wait for the cluster (the device and its default precision)."""
    old = open_output(out)
    if old is None:
        return None
    if old.meta.get("kind") != KIND:
        raise ConfigError(f"--out: {out} holds shards made by {old.meta.get('kind')}; allowed: a "
                          "new directory, or one generate_ddpm wrote (to resume)")
    mine, theirs = spec.identity(), {**LEGACY_IDENTITY, **old.meta["spec"]}
    for key in mine:
        if key not in skip and mine[key] != theirs.get(key):
            hint = (" (CPU and CUDA generators draw different noise: --gpus-per-task 0 samples "
                    "on the CPU, > 0 on CUDA)" if key == "noise_device" else "")
            raise ConfigError(f"--out: {out} was generated with {key}={theirs.get(key)!r}, this run "
                              f"has {mine[key]!r}; allowed: the same settings (to resume) or a new "
                              f"--out{hint}")
    beyond = sorted(n for n in old.rows if int(n[6:12]) >= spec.num_shards)
    if beyond:
        raise ConfigError(f"--num-images: {spec.num_images} needs {spec.num_shards} shards but {out} "
                          f"already holds {beyond[-1]}; allowed: at least "
                          f"{old.meta['num_images']} (what the directory was made for) or a new --out")
    return old


def plan(spec: GenerateSpec, out: Path) -> tuple[Manifest, list[int]]:
    """The manifest to continue from and the shards still to make. Raises before writing."""
    old = check_resume(spec, out)
    if old is None:
        return Manifest(_meta(spec), {}), list(range(spec.num_shards))
    if old.meta.get("batch_size") != spec.batch_size and old.rows:
        print(f"note: --batch-size {spec.batch_size} differs from the {old.meta.get('batch_size')} "
              "of the finished shards; new shards may differ from an uninterrupted run by float "
              "rounding (at most 1 in ~1e-5 of pixels)", file=sys.stderr)
    if old.meta.get("channels_last", False) != spec.channels_last and old.rows:
        print(f"note: channels_last={spec.channels_last} differs from the finished shards'; new "
              "shards may differ from an uninterrupted run by float rounding", file=sys.stderr)
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for k in range(spec.num_shards):
        name = shard_name(k)
        row = old.rows.get(name)
        if row is not None and row["count"] == spec.shard_count(k) and verified(out, row):
            rows[name] = row
        elif row is None and (adopted := _adopt(spec, out, k)) is not None:
            rows[name] = adopted
        else:
            todo.append(k)
    return Manifest(_meta(spec), rows), todo


def _adopt(spec: GenerateSpec, out: Path, k: int) -> dict[str, Any] | None:
    """A complete shard whose manifest row was lost (the run stopped between rename and manifest
    write): keep it if it holds exactly the expected samples. --balance shards are regenerated."""
    path = out / shard_name(k)
    if spec.balance or not path.is_file():
        return None
    try:
        scanned = scan_shard(path, spec.num_classes)
    except ValueError:
        return None
    expected = spec.candidates(k, 0)
    if scanned.indices != list(expected) or any(m is None or m.get("seed") != spec.seed
                                                for m in scanned.metas):
        return None
    return make_row(path.name, scanned, generated=len(expected), first_index=expected.start,
                    last_index=expected.stop - 1, source=spec.model, scheduler=spec.scheduler,
                    steps=spec.steps, seed=spec.seed, labeler=spec.labeler)


# ---------------------------------------------------------------------------------------------
# Execution: one Ray task per shard (or in-process, for tests and debugging)


def _run_local(spec: GenerateSpec, out: Path, todo: list[int], bar: tqdm) -> Iterator[dict]:
    device = task_device(spec)
    torch.backends.cudnn.benchmark = spec.cudnn_benchmark and device.type == "cuda"
    for k in todo:
        yield produce_shard(spec, k, out, device, progress=bar.update)


def cluster_capacity() -> dict[str, float]:
    """Resources the connected Ray cluster has now, or can start: an autoscaler that reports its
    node types to the GCS (not every Ray version's does) adds what its idle types would bring."""
    import ray

    have = dict(ray.cluster_resources())
    try:  # a private API (Ray Train reads it the same way); absent or empty on most clusters
        from ray._private.state import state

        declared = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - only a hint; the live resources still decide
        declared = {}
    for key, value in declared.items():
        have[key] = max(have.get(key, 0.0), float(value))
    return have


def resolve_gpus(flag: float | None, capacity: dict[str, float]) -> tuple[float, str]:
    """(--gpus-per-task, the line printed about it): the flag, else 1 where the cluster has GPUs."""
    gpus = capacity.get("GPU", 0.0)
    if flag is not None:
        return flag, f"--gpus-per-task {flag:g} (given; the Ray cluster has {gpus:g} GPUs)"
    chosen = 1.0 if gpus > 0 else 0.0
    return chosen, (f"--gpus-per-task {chosen:g} (default: the Ray cluster has {gpus:g} GPUs"
                    + ("" if gpus else "; on an autoscaling cluster whose GPU nodes are all down, "
                       "pass --gpus-per-task 1") + ")")


def task_resources(gpus: float, capacity: dict[str, float]) -> dict[str, float]:
    """Custom resources each task asks for: GENERATE_RESOURCE where the cluster declares it."""
    return {GENERATE_RESOURCE: gpus} if gpus > 0 and capacity.get(GENERATE_RESOURCE, 0) > 0 else {}


def _run_ray(spec: GenerateSpec, out: Path, todo: list[int], bar: tqdm, gpus: float,
             resources: dict[str, float]) -> Iterator[dict]:
    import ray
    from ray.exceptions import RayTaskError

    refs: list = []
    try:
        if gpus > 0 and ray.cluster_resources().get("GPU", 0) < gpus:
            print(f"note: --gpus-per-task {gpus:g} but the Ray cluster has no such GPUs now; tasks "
                  "wait until an autoscaler adds them", file=sys.stderr)
        # Both come from importable modules, so Ray pickles them by reference, not by value.
        counter = ray.remote(ProgressCounter).options(num_cpus=0).remote()
        task = ray.remote(shard_task).options(num_cpus=1, num_gpus=gpus, resources=resources,
                                              max_retries=2)
        refs = [task.remote(spec, k, str(out), counter) for k in todo]
        base, pending = bar.n, list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            bar.update(base + ray.get(counter.value.remote()) - bar.n)
            for ref in ready:
                try:
                    yield ray.get(ref)
                except RayTaskError as exc:
                    if isinstance(exc.cause, ConfigError):
                        raise ConfigError(str(exc.cause)) from None
                    raise
    except Exception:
        # An error: stop the other tasks before it goes up. Not on Ctrl-C (KeyboardInterrupt and
        # GeneratorExit are no Exception): in Ray 2.60 a cancel that meets a task's own reply can
        # abort the driver ("Tried to complete task that was not pending", ray-project/ray#54798),
        # and the process ends anyway: ray.shutdown (or, on a cluster, the job's end) kills them.
        for ref in refs:
            ray.cancel(ref, force=True)
        raise


def generate(spec: GenerateSpec, out: str | Path, *, use_ray: bool = True,
             gpus_per_task: float = 0.0, resources: dict[str, float] | None = None,
             progress: bool = True) -> tuple[Manifest, list[int]]:
    """Make every missing shard of `spec` in `out`; returns (manifest, shards made this run).
    With use_ray, Ray must be initialised (main does it) and gpus_per_task must match the spec."""
    assert not use_ray or (gpus_per_task > 0) == (spec.noise_device == "cuda"), (gpus_per_task, spec)
    out = Path(out)
    manifest, todo = plan(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    write_manifest(out, manifest)
    expected = sum(spec.shard_count(k) for k in todo) * (spec.oversample if spec.balance else 1)
    done = spec.num_images - sum(spec.shard_count(k) for k in todo)
    bar = tqdm(total=math.ceil(done + expected), initial=done, unit="img", dynamic_ncols=True,
               desc=f"generate {out.name}", disable=not progress, file=sys.stderr)
    if not todo:
        rows: Iterator[dict] = iter(())
    elif use_ray:
        rows = _run_ray(spec, out, todo, bar, gpus_per_task, resources or {})
    else:
        rows = _run_local(spec, out, todo, bar)
    for row in rows:
        manifest.rows[row["shard"]] = row
        write_manifest(out, manifest)
        bar.total = max(bar.total, bar.n)  # --balance may generate more than estimated
    bar.close()
    return manifest, todo


PLACEMENT_FIELDS = ("noise_device", "precision")  # identity fields that depend on the GPUs


def main(argv: list[str] | None = None, *, use_ray: bool = True) -> int:
    """use_ray=False runs the shards in this process on --gpus-per-task's device (tests)."""
    args = parse_args(argv)
    spec = build_spec(args)  # every flag checked (and the configs read) before Ray starts
    known = args.gpus_per_task is not None or not use_ray
    check_resume(spec, Path(args.out), skip=() if known else PLACEMENT_FIELDS)
    start = time.perf_counter()
    with StopSignals() as stop:  # Ctrl-C and SIGTERM alike: one line, exit 130 / 143
        try:
            with stop.translated():  # Ray's blocking calls turn a signal into KeyboardInterrupt
                manifest, made, spec = _generate_on(spec, args, use_ray, stop)
        except Interrupted as exc:
            print(f"\ninterrupted ({exc}): finished shards are kept in {args.out}; rerun the same "
                  "command to resume", file=sys.stderr)
            return exc.exit_code
    rows = manifest.rows.values()
    kept, generated = sum(r["count"] for r in rows), sum(r["generated"] for r in rows)
    print(f"{args.out}: {len(made)} shards made, {spec.num_shards - len(made)} already done; "
          f"{kept} images kept of {generated} generated "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def _generate_on(spec: GenerateSpec, args: argparse.Namespace, use_ray: bool, stop: StopSignals):
    """Start Ray (unless a cluster is already connected or use_ray is False), generate, and shut
    down what was started. Returns (manifest, shards made, the placed spec)."""
    ray = None
    if use_ray:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address=args.address, include_dashboard=False, logging_level="ERROR",
                     configure_logging=False)
            stop.install()  # ray.init replaces the SIGTERM handler
    try:
        capacity = cluster_capacity() if use_ray else {}
        gpus, line = resolve_gpus(args.gpus_per_task, capacity) if use_ray else (
            args.gpus_per_task or 0.0, "in-process")
        resources = task_resources(gpus, capacity)
        spec = dataclasses.replace(spec, **placement(args, gpus))
        print(f"{line}; noise on {spec.noise_device}, UNet in {spec.precision}"
              + (", channels_last" if spec.channels_last else "")
              + (f"; tasks ask for {{{GENERATE_RESOURCE!r}: {gpus:g}}} (the 8-GPU node type)"
                 if resources else ""), flush=True)  # stdout: stderr stays for notes and errors
        manifest, made = generate(spec, args.out, use_ray=use_ray, gpus_per_task=gpus,
                                  resources=resources, progress=not args.no_progress)
    finally:
        if ray is not None and started:
            ray.shutdown()
    return manifest, made, spec


if __name__ == "__main__":
    sys.exit(run_main("generate_ddpm", main))
