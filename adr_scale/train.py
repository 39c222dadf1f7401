"""`python -m adr_scale.train`: train one configuration on Ray Train (or in this process).

Examples:
  python -m adr_scale.train --preset smoke --out runs/smoke
  python -m adr_scale.train --preset smoke --workers 2 --out runs/smoke-2w
  python -m adr_scale.train --preset cifar100_resnet18_at_adr --set data.root=/data/cifar \\
      --workers 8 --gpus-per-worker 1 --address auto --storage-path s3://bucket/adr --out runs/c100
  python -m adr_scale.train --from-search runs/search-c100 --workers 8 --gpus-per-worker 1 --out runs/c100-long
  python -m adr_scale.train --preset smoke --workers 0 --out runs/smoke-local   # no Ray at all
  python -m adr_scale.train --show-preset cifar100_resnet18_at_awp_adr   # how a preset is built

Rerunning the same command resumes from the latest checkpoint: run names are deterministic
(the --out directory's name unless --name is given), never timestamps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adr_scale.cli import check_scaling, entry_parser, print_listing
from adr_scale.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    apply_overrides,
    attack_line,
    describe_preset,
    dump_yaml,
    get_preset,
    load_yaml,
    paper_text,
)
from adr_scale.interrupt import Interrupted, StopSignals
from adr_scale.run.lock import TrainingDiverged


def build_parser() -> argparse.ArgumentParser:
    parser = entry_parser("python -m adr_scale.train", __doc__)
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
    parser.add_argument("--show-preset", metavar="NAME",
                        help="print how preset NAME is built (a generated one's builder call, "
                        "field edits and official gin file; a hand-written one's source) and exit")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print_listing("\n".join(sorted(PRESETS)))
        return 0
    if args.show_preset:
        try:
            print_listing(describe_preset(args.show_preset))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
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
        # torch is imported only when there is work to do; Ray only once launch's checks pass
        from adr_scale.drivers import fit, launch

        if args.workers == 0:
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
