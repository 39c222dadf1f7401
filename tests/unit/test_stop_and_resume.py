"""What a stop leaves and what a resume finds, without Ray: --address where nothing answers,
checkpoints cut short in storage, the run directory brought to the newest checkpoint."""

import json
import signal
import time

import pytest
import torch

from adr_scale.config import ConfigError, apply_overrides, get_preset
from adr_scale.interrupt import Interrupted, StopSignals
from adr_scale.run import files as runfiles
from adr_scale.run.outputs import catch_up, read_metrics


def test_an_address_where_nothing_answers_is_one_line_within_seconds_and_writes_nothing(
        tmp_path, capsys):
    from adr_scale.cli import check_address
    from adr_scale.train import main

    out = tmp_path / "run"
    start = time.monotonic()
    code = main(["--preset", "smoke", "--workers", "1", "--address", "127.0.0.1:1", "--out",
                 str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.monotonic() - start < 10
    assert err.startswith("error: --address: nothing answers at 127.0.0.1:1 (Connection refused)")
    assert len(err.splitlines()) == 1 and not out.exists()
    with pytest.raises(ConfigError, match=r"nothing answers at 127.0.0.1:1"):
        check_address("ray://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"--address: invalid value 'nowhere'; allowed: auto or "
                                          r"host:port"):
        check_address("nowhere")


def _checkpoint(root, epoch, history):
    directory = root / "run" / runfiles.checkpoint_dir_name(epoch)
    directory.mkdir(parents=True)
    runfiles.write_checkpoint_files(directory, {"config": {}, "epoch": epoch}, history)
    return directory


def _rows(n):
    return [{"epoch": e, "step": 2 * e, "seconds": 1.0, "train_loss": 1.0,
             "val_robust_acc": 0.1 * e, "val_clean_acc": 0.5, "val_robust_acc_student": 0.1 * e,
             "val_clean_acc_student": 0.5, "val_robust_acc_ema": 0.1, "val_clean_acc_ema": 0.4}
            for e in range(1, n + 1)]


def test_a_checkpoint_cut_short_in_storage_is_incomplete_and_the_newest_complete_one_counts(
        tmp_path):
    for epoch in (1, 2, 3, 4):
        _checkpoint(tmp_path, epoch, _rows(epoch))
    run = tmp_path / "run"
    state = run / "epoch-0004" / runfiles.STATE_FILE
    state.write_bytes(state.read_bytes()[:10])  # a copy cut short
    (run / "epoch-0003" / runfiles.MANIFEST_FILE).unlink()  # not copied yet
    fs, _ = runfiles.storage_filesystem(str(tmp_path))
    assert runfiles.incomplete(fs, str(run / "epoch-0004")).startswith("state.pt holds 10 of its")
    assert runfiles.incomplete(fs, str(run / "epoch-0003")) == "manifest.json is missing"
    assert runfiles.incomplete(fs, str(run / "epoch-0002")) is None
    path, rows = runfiles.newest_complete(str(tmp_path), "run")
    assert path.endswith("epoch-0002") and rows == _rows(2)
    assert runfiles.newest_complete(str(tmp_path), "absent") is None


def test_first_readable_names_each_unreadable_candidate_and_refuses_when_none_loads(capsys):
    def load(x):
        if x < 0:
            raise EOFError("Ran out of input")
        return x * 10

    assert runfiles.first_readable([-1, -2, 3, 4], load, label=str, where="w") == (2, 30)
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: checkpoint -1 is unreadable (Ran out of input); trying the one "
                   "before it", "warning: checkpoint -2 is unreadable (Ran out of input); "
                   "trying the one before it"]
    assert runfiles.first_readable([], load, label=str, where="w") is None
    with pytest.raises(ConfigError, match=r"--out: none of the 2 checkpoints in 'w' is readable"):
        runfiles.first_readable([-1, -2], load, label=str, where="w", warn=False)


def test_untracked_checkpoints_of_a_finished_run_are_dropped_only_with_ray_s_record(tmp_path):
    for epoch in (1, 2, 3):
        _checkpoint(tmp_path, epoch, _rows(epoch))
    assert runfiles.drop_untracked(str(tmp_path), "run") == []  # no record: keep everything
    record = {"checkpoint_results": [{"checkpoint_dir_name": "epoch-0003"}]}
    (tmp_path / "run" / runfiles.RAY_SNAPSHOT_FILE).write_text(json.dumps(record))
    assert runfiles.drop_untracked(str(tmp_path), "run") == ["epoch-0001", "epoch-0002"]
    assert sorted(p.name for p in (tmp_path / "run").glob("epoch-*")) == ["epoch-0003"]


def test_catch_up_brings_a_stale_run_directory_to_the_newest_checkpoint(tmp_path):
    """Stopped after epoch 3's checkpoint but before its bookkeeping: best.pt, final.pt,
    metrics.jsonl and summary.json say epoch 2; afterwards they say epoch 3, and no more."""
    cfg = apply_overrides(get_preset("smoke"), ["train.epochs=3"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(2)))
    (run / "summary.json").write_text(json.dumps({"best_epoch": 2, "finished": False,
                                                  "test": {"kept": True}}))
    torch.save({"epoch": 2}, run / "best.pt")
    copied = []

    def copy(epoch, dst):
        copied.append((epoch, dst.name))
        torch.save({"epoch": epoch}, dst)

    catch_up(run, cfg, _rows(3), total_steps=6, steps_per_epoch=2, copy_checkpoint=copy)
    assert copied == [(3, "best.pt"), (3, "final.pt")]
    assert read_metrics(run) == _rows(3)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["best_epoch"], summary["finished"], summary["test"]) == (3, True, {"kept": True})
    assert "Finished: 3 epochs" in (run / "summary.md").read_text()
    copied.clear()
    catch_up(run, cfg, _rows(3), total_steps=6, steps_per_epoch=2, copy_checkpoint=copy)
    assert copied == []  # already current: nothing copied again
    catch_up(run, cfg, [], total_steps=6, steps_per_epoch=2, copy_checkpoint=copy)
    assert read_metrics(run) == []  # no checkpoint: no rows claimed


def test_an_unfinished_run_s_summary_claims_no_final_epoch():
    from adr_scale.run.outputs import summary_markdown

    cfg = apply_overrides(get_preset("smoke"), ["train.epochs=3"])
    md = summary_markdown(cfg, _rows(2), finished=False)
    assert "Not finished: 2 epochs so far, step 4." in md and "Final" not in md
    assert "| PGD-10 Best | Last | Diff | Clean Best | Last |" in md
    done = summary_markdown(cfg, _rows(3), finished=True)
    assert "Finished: 3 epochs, step 6." in done and "| PGD-10 Best | Final |" in done


def test_a_signal_inside_a_blocking_call_that_raises_keyboard_interrupt_leaves_as_interrupted():
    """Ray's ray.get turns whatever the handler raises into a plain KeyboardInterrupt (and only
    a KeyboardInterrupt stops it); `translated` gives the driver its Interrupted back."""
    with StopSignals() as stop, pytest.raises(Interrupted) as caught:
        with stop.translated():
            signal.raise_signal(signal.SIGTERM)  # our handler raises Interrupted here
    assert caught.value.exit_code == 143
    with StopSignals() as stop, pytest.raises(Interrupted) as caught:
        with stop.translated():
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                raise KeyboardInterrupt from None  # what Ray raises instead
    assert caught.value.exit_code == 130 and isinstance(caught.value, KeyboardInterrupt)


def test_the_first_signal_asks_a_graceful_stage_to_stop_and_the_second_quits_at_once():
    asked = []
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        with pytest.raises(Interrupted) as caught, stop.graceful(asked.append):
            signal.raise_signal(signal.SIGTERM)  # first: the stage is asked, nothing raised
            assert asked == [signal.SIGTERM] and stop.received == signal.SIGTERM
            signal.raise_signal(signal.SIGINT)  # second, while shutting down: at once
        assert caught.value.signum == signal.SIGINT and caught.value.exit_code == 130
        with pytest.raises(Interrupted) as again, stop.graceful(asked.append):
            pass  # a stage started after a signal does not run
        assert again.value.exit_code == 143 and asked == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
