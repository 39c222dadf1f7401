"""`python -m adr_scale.train`: train one configuration into a run directory.

Examples:
  python -m adr_scale.train --preset smoke --out runs/smoke
  python -m adr_scale.train --preset cifar100_resnet18_at_adr --set data.root=/data/cifar --out runs/c100
  python -m adr_scale.train --config runs/c100/config.yaml --set train.epochs=100 --out runs/c100-100

Rerunning the same command resumes from the run directory's latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from adr_scale.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    apply_overrides,
    dump_yaml,
    get_preset,
    load_yaml,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adr_scale.train", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help="named preset (see --list-presets); default: smoke")
    source.add_argument("--config", help="YAML config file (e.g. a run's config.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one field, e.g. adr.tau_start=1.5 "
                        "(repeatable)")
    parser.add_argument("--out", help="run directory (created, or resumed if it exists)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    parser.add_argument("--list-presets", action="store_true", help="list preset names and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve_config(args: argparse.Namespace) -> RunConfig:
    if args.config:
        cfg = load_yaml(args.config)
    else:
        cfg = get_preset(args.preset or "smoke")
    return apply_overrides(cfg, args.overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print("\n".join(sorted(PRESETS)))
        return 0
    try:
        cfg = resolve_config(args)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        if not args.out:
            raise ConfigError("--out: missing; name the run directory, e.g. --out runs/smoke")
        from adr_scale.engine import fit  # torch is imported only when there is work to do

        summary = fit(cfg, args.out, progress=not args.no_progress)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"best epoch {summary['best_epoch']}: val robust {summary['best_val_robust_acc']:.4f} "
          f"clean {summary['best_val_clean_acc']:.4f}; final: robust "
          f"{summary['final_val_robust_acc']:.4f} clean {summary['final_val_clean_acc']:.4f}; "
          f"run directory {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
