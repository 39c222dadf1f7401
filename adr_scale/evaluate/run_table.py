"""A run directory: best.pt and final.pt, the Best / Final / Diff table of the paper's Table 1."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from adr_scale.checkpoint import read_checkpoint
from adr_scale.config import ConfigError
from adr_scale.evaluate.checkpoint import load_model, load_test_set
from adr_scale.evaluate.options import EvalOptions, attack_label, note
from adr_scale.evaluate.report import evaluate_checkpoint, report_markdown
from adr_scale.run.directory import atomic_write_text

TEST_SECTION = "## Test set (adr_scale.evaluate)"


def evaluate_run(run_dir: str | Path, out: str | Path | None, opts: EvalOptions) -> dict[str, Any]:
    """Evaluate best.pt and final.pt; fill summary.json["test"] and summary.md's test section."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"--run: {str(run)!r} is not a directory")
    for name in ("best.pt", "final.pt"):
        if not (run / name).is_file():
            raise ConfigError(f"--run: {str(run)!r} has no {name}; has the run finished? "
                              "(evaluate a single checkpoint with --checkpoint)")
    out = Path(out) if out is not None else run / "eval"
    first = load_model(run / "best.pt", opts.model, "cpu", flag="--run")
    # A bad final.pt must fail before anything is written under eval/.
    load_model(run / "final.pt", first.which, "cpu", flag="--run")
    test = load_test_set(first.cfg, opts.data_root, opts.n_examples)
    opts = replace(opts, model=first.which)  # both checkpoints report the same network
    best = evaluate_checkpoint(run / "best.pt", out / "best", opts, test)
    if (best["epoch"], best["step"]) == _epoch_step(run / "final.pt"):
        note("final.pt is the best epoch: its report is best.pt's", opts.progress)
        final = dict(best, checkpoint=str((run / "final.pt").resolve()))
        (out / "final").mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "final" / "report.json", json.dumps(final, indent=2) + "\n")
        atomic_write_text(out / "final" / "report.md", report_markdown(final))
    else:
        final = evaluate_checkpoint(run / "final.pt", out / "final", opts, test)
    section = test_summary(best, final, run, out)
    _update_summary(run, section)
    atomic_write_text(out / "report.json", json.dumps(section, indent=2) + "\n")
    atomic_write_text(out / "report.md", test_markdown(section) + "\n")
    return section


def _epoch_step(path: Path) -> tuple[int, int]:
    ckpt = read_checkpoint(path, "--run")
    return int(ckpt.get("epoch", -1)), int(ckpt.get("step", -2))


def test_summary(best: dict[str, Any], final: dict[str, Any], run: Path, out: Path,
                 ) -> dict[str, Any]:
    acc_best = {k: v["accuracy"] for k, v in best["attacks"].items()}
    acc_final = {k: v["accuracy"] for k, v in final["attacks"].items()}
    return {
        "model": best["model"], "dataset": best["dataset"], "split": "test", "n": best["n"],
        "eps": best["eps"], "eps_text": best["eps_text"],
        "best": {"epoch": best["epoch"], "checkpoint": "best.pt", "accuracy": acc_best},
        "final": {"epoch": final["epoch"], "checkpoint": "final.pt", "accuracy": acc_final},
        "diff": {k: acc_best[k] - acc_final[k] for k in acc_best},
        "reports": {k: _relative(out / k / "report.md", run) for k in ("best", "final")},
        "checks_failed": sorted({c["name"] for r in (best, final) for c in r["checks"]
                                 if not c["passed"]}),
        "created": best["created"],
    }


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def test_markdown(section: dict[str, Any]) -> str:
    b, f = section["best"], section["final"]
    lines = [
        TEST_SECTION,
        "",
        f"Accuracy (%) on the first {section['n']} {section['dataset']} test images, Linf eps "
        f"{section['eps_text']}, {section['model']} model, in the form of the paper's Table 1: "
        "*Best* is the checkpoint with the highest validation PGD accuracy (the test set never "
        "selects a checkpoint), *Final* the last epoch, *Diff* = Best - Final in points.",
        "",
        f"| attack | Best (epoch {b['epoch']}) | Final (epoch {f['epoch']}) | Diff |",
        "|---|---|---|---|",
    ]
    for name, acc in b["accuracy"].items():
        lines.append(f"| {attack_label(name)} | {100 * acc:.2f} | "
                     f"{100 * f['accuracy'][name]:.2f} | {100 * section['diff'][name]:+.2f} |")
    failed = ", ".join(section["checks_failed"]) or "none"
    lines += ["", f"Reports: `{section['reports']['best']}`, `{section['reports']['final']}`; "
              f"failed checks: {failed}."]
    return "\n".join(lines)


def replace_test_section(old: str, section: str) -> str:
    """Put `section` in place of the '## Test set' section of `old` (up to the next '## ')."""
    pattern = re.compile(r"^## Test set.*?(?=^## |\Z)", re.S | re.M)
    block = section.rstrip() + "\n"
    if pattern.search(old):
        return pattern.sub(lambda _: block + "\n", old, count=1).rstrip() + "\n"
    return (old.rstrip() + "\n\n" if old.strip() else "") + block


def _update_summary(run: Path, section: dict[str, Any]) -> None:
    summary_json = run / "summary.json"
    summary = json.loads(summary_json.read_text()) if summary_json.exists() else {}
    summary["test"] = section
    atomic_write_text(summary_json, json.dumps(summary, indent=2) + "\n")
    md = run / "summary.md"
    old = md.read_text() if md.exists() else ""
    atomic_write_text(md, replace_test_section(old, test_markdown(section)))
