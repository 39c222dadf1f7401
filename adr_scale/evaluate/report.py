"""One checkpoint: every attack, the checks, report.json and report.md."""

from __future__ import annotations

import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adr_scale.config import to_dict
from adr_scale.data import ArrayDataset
from adr_scale.engine import resolve_device
from adr_scale.evaluate.autoattack import autoattack_backend, autoattack_flags
from adr_scale.evaluate.checkpoint import LoadedModel, load_model, load_test_set
from adr_scale.evaluate.options import (
    AUTOATTACK_VERSIONS,
    PGD_ALPHA_FRACTION,
    EvalOptions,
    attack_label,
    format_eps,
    note,
)
from adr_scale.evaluate.pgd import accuracy, clean_flags, pgd_flags
from adr_scale.evaluate.sanity import check, sanity_checks, tolerance
from adr_scale.run.directory import atomic_write_text
from adr_scale.run.provenance import dist_version, git_revision


def evaluate_checkpoint(path: str | Path, out: str | Path, opts: EvalOptions,
                        test: ArrayDataset | None = None,
                        loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint on the test split; write out/report.json and out/report.md."""
    device = resolve_device(opts.device)
    loaded = loaded or load_model(path, opts.model, device)
    data = test if test is not None else load_test_set(loaded.cfg, opts.data_root, opts.n_examples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = _report_header(loaded, data, opts, device)
    for name in opts.attacks:
        note(f"{attack_label(name)} on {len(data)} test images of {loaded.path}", opts.progress)
        report["attacks"][name] = _run_attack(name, loaded, data, opts, device, out)
    report["checks"] = ordering_checks(report["attacks"], len(data))
    if opts.sanity:
        clean = report["attacks"].get("clean", {}).get("accuracy")
        if clean is None:
            clean = accuracy(clean_flags(loaded.module, data, batch_size=opts.batch_size,
                                         device=device))
        report["sanity"] = sanity_checks(loaded.module, data, eps=opts.eps, clean_acc=clean,
                                         batch_size=opts.batch_size, device=device, seed=opts.seed,
                                         out=out, progress=opts.progress)
        report["checks"] += report["sanity"]["checks"]
    report["warnings"] = [f"AutoAttack: {w}" for a in report["attacks"].values()
                          for w in a.get("warnings", [])]
    report["warnings"] += [f"check {c['name']} failed: {c['reason']}" for c in report["checks"]
                           if not c["passed"]]
    for message in report["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def _report_header(loaded: LoadedModel, data: ArrayDataset, opts: EvalOptions,
                   device: torch.device) -> dict[str, Any]:
    return {
        "checkpoint": str(loaded.path.resolve()), "epoch": loaded.epoch, "step": loaded.step,
        "model": loaded.which, "dataset": loaded.cfg.data.dataset, "arch": loaded.cfg.model.arch,
        "split": "test", "n": len(data), "eps": opts.eps, "eps_text": format_eps(opts.eps),
        "train_eps": loaded.cfg.attack.eps, "batch_size": opts.batch_size, "device": str(device),
        "seed": opts.seed, "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": package_versions(opts.attacks), "git_revision": git_revision(),
        "config": to_dict(loaded.cfg), "attacks": {},
    }


def _run_attack(name: str, loaded: LoadedModel, data: ArrayDataset, opts: EvalOptions,
                device: torch.device, out: Path) -> dict[str, Any]:
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    eps = opts.eps
    seconds = None
    if name == "clean":
        flags, eps = clean_flags(loaded.module, data, batch_size=opts.batch_size, device=device), 0.0
    elif name in AUTOATTACK_VERSIONS:
        state_path = out / f"autoattack-{AUTOATTACK_VERSIONS[name]}.state.json"
        outcome, extra = autoattack_flags(loaded, data, name=name, eps=eps, opts=opts,
                                          device=device, state_path=state_path)
        flags, seconds = outcome.robust, outcome.seconds  # over every session, if resumed
    else:
        steps = int(name[3:])
        extra = {"steps": steps, "alpha": PGD_ALPHA_FRACTION * eps, "random_start": "uniform",
                 "restarts": 1}
        flags = pgd_flags(loaded.module, data, eps=eps, steps=steps, batch_size=opts.batch_size,
                          device=device, seed=opts.seed, progress=opts.progress)
    if seconds is None:
        seconds = time.perf_counter() - start
    acc = accuracy(flags)
    note(f"{attack_label(name)}: {acc:.2%} of {len(flags)} ({seconds:.1f} s)", opts.progress)
    return {"accuracy": acc, "correct": int(flags.sum()), "n": len(flags), "eps": eps,
            "seconds": round(seconds, 3), **extra}


def ordering_checks(attacks: dict[str, dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """A robust accuracy above the clean one, or AutoAttack above PGD, means a broken attack."""
    checks = []
    clean = attacks.get("clean", {}).get("accuracy")
    robust = {k: v["accuracy"] for k, v in attacks.items() if k != "clean"}
    if clean is not None:
        for name, acc in robust.items():
            checks.append(check(f"{name}_at_most_clean", acc <= clean + tolerance(clean, n),
                                 f"{attack_label(name)} {acc:.2%} vs clean {clean:.2%}"))
    pgd = {k: v for k, v in robust.items() if k.startswith("pgd")}
    for name in (k for k in robust if k in AUTOATTACK_VERSIONS):
        for p, acc in pgd.items():
            checks.append(check(f"{name}_at_most_{p}", robust[name] <= acc + tolerance(acc, n),
                                 f"{attack_label(name)} {robust[name]:.2%} vs "
                                 f"{attack_label(p)} {acc:.2%}"))
    return checks


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Test-set evaluation of `{report['checkpoint']}`",
        "",
        f"{report['model']} model, epoch {report['epoch']} (step {report['step']}); "
        f"{report['dataset']} {report['arch']}; first {report['n']} test images; Linf eps "
        f"{report['eps_text']} (trained at {format_eps(report['train_eps'])}); seed "
        f"{report['seed']}; device {report['device']}; created {report['created']}.",
        "",
        "| attack | accuracy (%) | correct / n | eps | seconds | details |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in report["attacks"].items():
        lines.append(f"| {attack_label(name)} | {100 * a['accuracy']:.2f} | {a['correct']} / "
                     f"{a['n']} | {format_eps(a['eps']) if a['eps'] else 0} | {a['seconds']:.1f} | "
                     f"{_details(a)} |")
    if report["checks"]:
        lines += ["", "## Checks", "", "| check | passed | reason |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'yes' if c['passed'] else '**NO**'} | {c['reason']} |"
                  for c in report["checks"]]
    if report.get("sanity", {}).get("plot"):
        lines += ["", f"![sanity checks]({report['sanity']['plot']})"]
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in report["warnings"]] or ["None."]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines += ["", f"Versions: {versions}; git revision {report['git_revision'] or 'unknown'}.", ""]
    return "\n".join(lines)


def _details(a: dict[str, Any]) -> str:
    if "steps" in a:
        return f"step {format_eps(a['alpha'])}, 1 uniform random start, last iterate"
    if "per_attack" in a:
        chain = " -> ".join(f"{k} {100 * v:.2f}" for k, v in a["per_attack"].items())
        resumed = "; resumed" if a["resumed"] else ""
        return (f"{a['backend']} {a['backend_version']}, {a['version']}, "
                f"{a['n_target_classes']} targets; {chain}{resumed}")
    return ""


def package_versions(attacks: list[str]) -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "adr-scale": dist_version("adr-scale") or "?"}
    if any(a in AUTOATTACK_VERSIONS for a in attacks):
        backend = autoattack_backend()
        versions[backend.name] = backend.version
    return versions
