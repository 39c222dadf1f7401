"""`python -m adr_scale.evaluate`: test-set accuracy of a checkpoint under clean, PGD-K and AutoAttack.

Examples:
  python -m adr_scale.evaluate --run runs/c100                      # best.pt and final.pt: Table 1
  python -m adr_scale.evaluate --checkpoint runs/c100/best.pt --attacks clean,pgd100 --sanity
  python -m adr_scale.evaluate --run runs/smoke --eps 16/255 --n-examples 100 --device cpu
  python -m adr_scale.evaluate --checkpoint runs/c100/best.pt --attacks clean --export zoo/c100

Attacks: clean; pgdK (PGD with K steps of eps/4 from one uniform random start, e.g. pgd10, pgd100);
autoattack (the official code, version "standard": APGD-CE, APGD-T, FAB-T, Square); autoattack-plus.
Only the test split is used, and only its first --n-examples images. Rerunning an interrupted
command resumes AutoAttack from the state file in --out (delete it to start again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adr_scale.cli import entry_parser
from adr_scale.config import ConfigError
from adr_scale.engine import resolve_device
from adr_scale.evaluate.checkpoint import load_model
from adr_scale.evaluate.options import (
    ATTACKS_ALLOWED,
    DEFAULT_ATTACKS,
    EvalOptions,
    attack_label,
    parse_attacks,
    parse_eps,
)
from adr_scale.evaluate.report import evaluate_checkpoint
from adr_scale.evaluate.run_table import evaluate_run, test_markdown
from adr_scale.interrupt import Interrupted, StopSignals
from adr_scale.models.export import export_model
from adr_scale.run.lock import check_writable


def build_parser() -> argparse.ArgumentParser:
    parser = entry_parser("python -m adr_scale.evaluate", __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="FILE", help="a training checkpoint (.pt)")
    source.add_argument("--run", metavar="DIR", help="a finished run directory: evaluates best.pt "
                        "and final.pt and fills the test section of summary.json / summary.md")
    parser.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                        help=f"comma list of: {ATTACKS_ALLOWED} (default: %(default)s)")
    parser.add_argument("--n-examples", type=int, metavar="N",
                        help="evaluate the first N test images (default: the whole test split)")
    parser.add_argument("--eps", default="8/255", help="Linf radius, e.g. 8/255 or 0.0314 "
                        "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--model", choices=("ema", "student"), help="network to evaluate "
                        "(default: ema if the run trained with train.wa=true, else student)")
    parser.add_argument("--data-root", help="directory of the dataset (default: data.root of the "
                        "checkpoint's config)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N "
                        "(default: %(default)s)")
    parser.add_argument("--out", metavar="DIR", help="report directory (default: DIR/eval for "
                        "--run, eval-<name> next to the checkpoint for --checkpoint)")
    parser.add_argument("--seed", type=int, default=0, help="PGD random starts and AutoAttack's "
                        "seed (default: %(default)s)")
    parser.add_argument("--sanity", action="store_true", help="PGD accuracy against eps and "
                        "against steps, checked and plotted (sanity.png)")
    parser.add_argument("--export", metavar="DIR", help="also write model.pt + model.json (load "
                        "with adr_scale.evaluate.load_exported); with --run, best.pt's model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or notes")
    parser.add_argument("--verbose", action="store_true", help="show AutoAttack's own log lines")
    return parser


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: invalid value {args.batch_size}; allowed: an integer >= 1")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise ConfigError(f"--device: invalid value {args.device!r}; allowed: auto, cpu, cuda, cuda:N")
    if args.n_examples is not None and args.n_examples < 1:
        raise ConfigError(f"--n-examples: invalid value {args.n_examples}; allowed: an integer >= 1")
    return EvalOptions(attacks=parse_attacks(args.attacks), n_examples=args.n_examples,
                       eps=parse_eps(args.eps), batch_size=args.batch_size, model=args.model,
                       data_root=args.data_root, device=args.device, seed=args.seed,
                       sanity=args.sanity, progress=not args.no_progress, verbose=args.verbose)


def run_cli(args: argparse.Namespace) -> None:
    opts = options_from_args(args)
    for flag, where in (("--out", args.out), ("--export", args.export)):
        if where:
            check_writable(where, flag)
    if args.run:
        section = evaluate_run(args.run, args.out, opts)
        print(test_markdown(section))
    else:
        path = Path(args.checkpoint)
        loaded = load_model(path, opts.model, resolve_device(opts.device))
        out = Path(args.out) if args.out else path.parent / f"eval-{path.stem}"
        report = evaluate_checkpoint(path, out, opts, loaded=loaded)
        accs = ", ".join(f"{attack_label(k)} {100 * v['accuracy']:.2f} %"
                         for k, v in report["attacks"].items())
        print(f"{path} ({report['model']}, epoch {report['epoch']}): {accs} on {report['n']} test "
              f"images at eps {report['eps_text']}; report {out / 'report.md'}")
    if args.export:
        if args.run:  # best.pt: selected on validation, never on the test set
            loaded = load_model(Path(args.run) / "best.pt", opts.model, "cpu", flag="--run")
        where = export_model(loaded, args.export, opts.eps)
        print(f"exported the {loaded.which} model of {loaded.path} to {where}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with StopSignals():  # Ctrl-C and SIGTERM alike: one line, exit 130 / 143
        try:
            run_cli(args)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Interrupted as exc:
            print(f"interrupted ({exc}); rerun the same command to resume AutoAttack from its "
                  "state file", file=sys.stderr)
            return exc.exit_code
    return 0
