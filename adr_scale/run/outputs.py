"""What a person reads in a run directory: metrics.jsonl, summary.json, summary.md (the paper's
Table 1 form), PNG plots and TensorBoard event files. Everything is derived from the epoch history
stored in every checkpoint, so a resumed or restarted run rewrites the same files, with each
epoch exactly once.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adr_scale.checkpoint import selected_network
from adr_scale.config import RunConfig
from adr_scale.run.directory import atomic_write_text
from adr_scale.schedules import adr_schedule, learning_rate

TEST_SECTION = "## Test set"  # written by adr_scale.evaluate; kept when summary.md is rewritten
PLOT_EVERY_S = 60.0  # PNGs are redrawn at most this often (and at the end)


def validated(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epochs that were validated (all of them unless train.val_every > 1)."""
    return [r for r in rows if "val_robust_acc" in r]


def summarize(rows: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """Best (highest validation robust accuracy) and final (last validated) epochs, as in the
    paper's Table 1; `rows` must hold at least one validated epoch."""
    val = validated(rows)
    best = max(val, key=lambda r: (r["val_robust_acc"], -r["epoch"]))
    final = val[-1]
    return {
        "selected_model": selected_network(cfg),
        "best_epoch": best["epoch"],
        "best_val_robust_acc": best["val_robust_acc"],
        "best_val_clean_acc": best["val_clean_acc"],
        "final_epoch": final["epoch"],
        "final_val_robust_acc": final["val_robust_acc"],
        "final_val_clean_acc": final["val_clean_acc"],
        "robust_overfitting_gap": best["val_robust_acc"] - final["val_robust_acc"],
        "steps": rows[-1]["step"],
        "train_seconds": round(sum(r["seconds"] for r in rows), 1),
    } | ({"class_names": list(cfg.data.class_names)} if cfg.data.class_names else {})


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _table_row(rows: list[dict[str, Any]], model: str) -> str:
    robust, clean = f"val_robust_acc_{model}", f"val_clean_acc_{model}"
    rows = validated(rows)
    best = max(rows, key=lambda r: (r[robust], -r["epoch"]))
    final = rows[-1]
    cells = [best[robust], final[robust], best[robust] - final[robust],
             best[clean], final[clean], best[clean] - final[clean]]
    label = "EMA (+WA)" if model == "ema" else "student"
    return (f"| {label} | " + " | ".join(f"{100 * c:.2f}" for c in cells)
            + f" | {best['epoch']} |")


def summary_markdown(cfg: RunConfig, rows: list[dict[str, Any]], finished: bool,
                     old_text: str = "") -> str:
    a, r = cfg.attack, cfg.adr
    # an unfinished run (stopped, or still training) has no final epoch yet: its last validated one
    last, end = ("Final", "epoch") if finished else ("Last", "validated epoch so far")
    adr = (f"ADR tau {r.tau_start:g} -> {r.tau_end:g}, lambda {r.lambda_start:g} -> "
           f"{r.lambda_end:g}" if r.enabled else "ADR off")
    lines = [
        f"# {cfg.data.dataset} {cfg.model.arch} ({cfg.model.activation}) "
        f"{cfg.train.method.upper()}{' + AWP' if cfg.awp.enabled else ''}"
        f"{' + WA' if cfg.train.wa else ''}{' + ADR' if r.enabled else ''}",
        "",
        f"{adr}; eps {a.eps * 255:.3g}/255; {cfg.train.epochs} epochs, batch {cfg.train.batch_size}"
        f", {cfg.optim.schedule} LR {cfg.optim.lr:g}; seed {cfg.seed}. "
        f"{'Finished' if finished else 'Not finished'}: {len(rows)} epochs"
        f"{'' if finished else ' so far'}, step {rows[-1]['step']}.",
        "",
        f"## Validation split (PGD-{a.eval_steps}, model selection)",
        "",
        "Accuracy (%) in the form of the paper's Table 1: *Best* is the epoch with the highest "
        f"validation robust accuracy, *{last}* the last {end}, *Diff* = Best - {last} (robust "
        f"overfitting). Selected model: {'EMA (WA)' if cfg.train.wa else 'student'}.",
        "",
        f"| model | PGD-{a.eval_steps} Best | {last} | Diff | Clean Best | {last} | Diff | best epoch |",
        "|---|---|---|---|---|---|---|---|",
        _table_row(rows, "student"),
        _table_row(rows, "ema"),
        "",
        "Plots: `learning_curves.png`, `schedules.png`; TensorBoard: `tensorboard/`.",
        "",
    ]
    match = re.search(rf"^{re.escape(TEST_SECTION)}.*?(?=^## |\Z)", old_text, re.S | re.M)
    lines.append(match.group(0).rstrip() + "\n" if match else
                 f"{TEST_SECTION} (adr_scale.evaluate)\n\nNot evaluated yet: "
                 "`python -m adr_scale.evaluate --run <this directory>` fills in AutoAttack.\n")
    return "\n".join(lines)


def plot_learning_curves(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in rows], color="k")
    axes[0].set(title="training loss", xlabel="epoch")
    for ax, key, title in ((axes[1], "val_clean_acc", "validation clean accuracy"),
                           (axes[2], "val_robust_acc", "validation robust accuracy (PGD)")):
        for model, style in (("student", "-"), ("ema", "--")):
            ax.plot([r["epoch"] for r in validated(rows)],
                    [100 * r[f"{key}_{model}"] for r in validated(rows)], style,
                    label="EMA (WA)" if model == "ema" else model)
        ax.set(title=title, xlabel="epoch", ylabel="%")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_schedules(path: Path, cfg: RunConfig, total_steps: int, steps_per_epoch: int,
                   done_steps: int) -> None:
    """tau, lambda and the learning rate over every optimizer step (pure functions of the step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(0, total_steps + 1, max(total_steps // 500, 1)))
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    curves = {
        "tau (temperature)": [adr_schedule(cfg.adr, s, total_steps)[0] for s in steps],
        "lambda (interpolation)": [adr_schedule(cfg.adr, s, total_steps)[1] for s in steps],
        "learning rate": [learning_rate(cfg.optim.schedule, cfg.optim.lr, s, total_steps, warmup)
                          for s in steps],
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (title, values) in zip(axes, curves.items(), strict=True):
        ax.plot(steps, values)
        ax.axvline(done_steps, color="grey", lw=0.8, ls=":")
        ax.set(title=title + ("" if cfg.adr.enabled or "learning" in title else " (ADR off)"),
               xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_tensorboard(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Append the epochs not logged yet (tracked in tensorboard/logged_epochs)."""
    from torch.utils.tensorboard import SummaryWriter

    tb = run_dir / "tensorboard"
    tb.mkdir(exist_ok=True)
    marker = tb / "logged_epochs"
    done = int(marker.read_text()) if marker.exists() else 0
    new = [r for r in rows if r["epoch"] > done]
    if not new:
        return
    with SummaryWriter(str(tb)) as writer:
        for row in new:
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, global_step=row["step"])
    atomic_write_text(marker, str(new[-1]["epoch"]))


def write_run_outputs(run_dir: Path, cfg: RunConfig, rows: list[dict[str, Any]], *,
                      total_steps: int, steps_per_epoch: int, finished: bool,
                      plots: bool = True) -> dict[str, Any]:
    """Rewrite metrics.jsonl, summary.json, summary.md, TensorBoard and (if `plots`) the PNGs."""
    run_dir = Path(run_dir)
    write_metrics(run_dir, rows)
    if not validated(rows):  # train.val_every > 1: nothing to summarise before the first one
        return {}
    summary = summarize(rows, cfg) | {"finished": finished}
    old = run_dir / "summary.json"
    if old.exists():  # keep sections other tools added (adr_scale.evaluate's "test")
        summary = {k: v for k, v in json.loads(old.read_text()).items() if k not in summary} | summary
    atomic_write_text(old, json.dumps(summary, indent=2) + "\n")
    md = run_dir / "summary.md"
    atomic_write_text(md, summary_markdown(cfg, rows, finished,
                                           md.read_text() if md.exists() else ""))
    write_tensorboard(run_dir, rows)
    if plots:
        plot_learning_curves(run_dir / "learning_curves.png", rows)
        plot_schedules(run_dir / "schedules.png", cfg, total_steps, steps_per_epoch,
                       rows[-1]["step"])
    return summary


def catch_up(run_dir: Path, cfg: RunConfig, rows: list[dict[str, Any]], *, total_steps: int,
             steps_per_epoch: int, copy_checkpoint: Callable[[int, Path], None]) -> None:
    """Bring a run directory to `rows`, the history of its newest checkpoint, after a signal or a
    crash stopped the run between that checkpoint and its bookkeeping (or, on Ray, with reports
    still queued behind the uploads): best.pt and final.pt where summary.json shows them stale,
    then the metrics, summaries and plots. `copy_checkpoint(epoch, path)` writes epoch `epoch`'s
    checkpoint to `path` where that checkpoint still exists. Without rows (no checkpoint) metrics.jsonl is
    emptied: the rerun starts over."""
    run_dir = Path(run_dir)
    on_disk = read_metrics(run_dir)
    if not rows:
        if on_disk:
            write_metrics(run_dir, [])
        return
    try:
        before = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        before = {}
    finished = rows[-1]["epoch"] == -(-total_steps // steps_per_epoch)
    best = summarize(rows, cfg)["best_epoch"] if validated(rows) else None
    stale_best = best is not None and (before.get("best_epoch") != best
                                       or not (run_dir / "best.pt").exists())
    stale_final = finished and not (before.get("finished") and (run_dir / "final.pt").exists())
    if stale_best:
        copy_checkpoint(best, run_dir / "best.pt")
    if stale_final:
        copy_checkpoint(rows[-1]["epoch"], run_dir / "final.pt")
    if stale_best or stale_final or on_disk != rows:
        write_run_outputs(run_dir, cfg, rows, total_steps=total_steps,
                          steps_per_epoch=steps_per_epoch, finished=finished)


def read_metrics(run_dir: Path) -> list[dict[str, Any]] | None:
    """metrics.jsonl's rows; None when it is absent or torn."""
    try:
        return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
                if x]
    except (OSError, ValueError):
        return None


class RunOutputs:
    """The end-of-epoch bookkeeping of a run directory, the same for the in-process loop
    (drivers.fit) and the Ray controller callback (ray_adapter): best.pt and final.pt, then the
    metrics, summaries and TensorBoard, and the PNGs at most every PLOT_EVERY_S seconds."""

    def __init__(self, run_dir: Path, cfg: RunConfig) -> None:
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.last_plot = time.monotonic()

    def epoch_end(self, rows: list[dict[str, Any]], *, improved: bool, finished: bool,
                  total_steps: int, steps_per_epoch: int,
                  write_checkpoint: Callable[[Path], None] | None) -> None:
        """`write_checkpoint(path)` writes this epoch's checkpoint to `path` (None: the epoch
        saved none; an improved or final epoch always saves one)."""
        if write_checkpoint is not None:
            for wanted, name in ((improved, "best.pt"), (finished, "final.pt")):
                if wanted:
                    write_checkpoint(self.run_dir / name)
        plots = finished or time.monotonic() - self.last_plot > PLOT_EVERY_S
        write_run_outputs(self.run_dir, self.cfg, rows, total_steps=total_steps,
                          steps_per_epoch=steps_per_epoch, finished=finished, plots=plots)
        if plots:
            self.last_plot = time.monotonic()
