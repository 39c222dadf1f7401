"""The one run-directory writer of the in-process loop and the Ray callback (run.outputs.RunOutputs)."""

import json

import pytest

from adr_scale.config import get_preset
from adr_scale.run import outputs as report


def _row(epoch, robust):
    accs = {f"val_{k}_acc{m}": robust for k in ("robust", "clean") for m in ("", "_student", "_ema")}
    return {"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0, "seconds": 0.5} | accs


def _copies(written):
    return lambda path: (written.append(path.name), path.write_text("ckpt"))


def test_best_and_final_copies_and_the_plot_clock(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(report.time, "monotonic", lambda: clock[0])
    outputs, written = report.RunOutputs(tmp_path, get_preset("smoke")), []
    kw = dict(total_steps=30, steps_per_epoch=10)
    outputs.epoch_end([_row(1, 0.5)], improved=True, finished=False,
                      write_checkpoint=_copies(written), **kw)
    assert written == ["best.pt"] and not (tmp_path / "learning_curves.png").exists()
    clock[0] += report.PLOT_EVERY_S + 1  # the throttle has passed: this epoch draws the PNGs
    rows = [_row(1, 0.5), {"epoch": 2, "step": 20, "train_loss": 0.9, "seconds": 0.5}]
    outputs.epoch_end(rows, improved=False, finished=False, write_checkpoint=None, **kw)
    assert (tmp_path / "learning_curves.png").exists() and written == ["best.pt"]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    (tmp_path / "learning_curves.png").unlink()
    rows.append(_row(3, 0.4))
    outputs.epoch_end(rows, improved=False, finished=True, write_checkpoint=_copies(written), **kw)
    assert written == ["best.pt", "final.pt"] and (tmp_path / "learning_curves.png").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["finished"] and summary["best_epoch"] == 1 and summary["final_epoch"] == 3
    assert summary["robust_overfitting_gap"] == pytest.approx(0.1)


def test_unvalidated_first_epochs_write_only_metrics(tmp_path):
    outputs = report.RunOutputs(tmp_path, get_preset("smoke"))
    row = {"epoch": 1, "step": 10, "train_loss": 1.0, "seconds": 0.5}  # train.val_every > 1
    outputs.epoch_end([row], improved=False, finished=False, write_checkpoint=None,
                      total_steps=30, steps_per_epoch=10)
    assert (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "summary.json").exists()
