"""SIGINT and SIGTERM to a real `python -m adr_scale.train` (in-process and on Ray): exit 130 /
143 with one line and no traceback, the newest checkpoint kept and the run directory saying no
more than it holds; the same command resumes from it, trains no epoch twice and ends with the
numbers of an uninterrupted run. On Ray also a killed driver (SIGKILL), resumed from the newest
checkpoint that loads when the latest one is torn.

Its own module: each CLI run starts its own Ray, so no other test's cluster may be alive meanwhile.
A signal is sent once a run has two new checkpoints, so it lands mid-run.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from adr_scale.checkpoint import load_checkpoint
from adr_scale.config import apply_overrides, get_preset
from adr_scale.drivers import fit
from adr_scale.run.files import RAY_SNAPSHOT_FILE, newest_complete

pytestmark = [pytest.mark.slow]

EPOCHS = 20  # signals land after epoch 2 and 2 epochs into each resume; a Ray run takes 6-14 s
# to stop, ~2 s an epoch here, and a killed one's worker trains on for a few epochs (seen: 4, 8, 14
# of 16 for the three stops)
OVERRIDES = [f"train.epochs={EPOCHS}", "train.device=cpu", "attack.eval_steps=2"]  # cheap validation
TIMING = ("seconds", "samples_per_s")  # wall-clock fields of a row; the rest is reproducible
LINE = re.compile(r"interrupted \((SIG\w+)\): the latest checkpoint, after epoch (\d+) of "
                  rf"{EPOCHS}, is kept; rerun the same command to resume")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted in-process run of the same config, on one CPU thread like every run here
    (a Ray worker's torch uses its one CPU; other thread counts change float summation order,
    which can flip a validation image)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(apply_overrides(get_preset("smoke"), OVERRIDES), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _cmd(out, *options):
    sets = [x for o in OVERRIDES for x in ("--set", o)]
    return [sys.executable, "-m", "adr_scale.train", "--preset", "smoke", *sets, "--out",
            str(out), "--no-progress", *options]


def _run(cmd, log, trigger=None, signum=None, limit_s=400, group=False):
    """Run `cmd` (output to `log`); once `trigger` exists, send it `signum` (to its process group:
    the driver and the local Ray it started, with `group`). Returns (exit status, output, seconds
    from the signal to the exit)."""
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # see `reference`
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + limit_s
            while trigger is not None and not trigger.exists():
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{trigger} never appeared"
                time.sleep(0.05)
            sent = time.monotonic()
            if signum is not None:
                os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
            proc.wait(timeout=limit_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, log.read_text(), time.monotonic() - sent


def _kept(output, signum) -> int:
    """The epoch the one interrupt line says is kept; no traceback, no second line."""
    assert "Traceback" not in output, output[-3000:]
    lines = [x for x in output.splitlines() if x.startswith("interrupted")]
    assert len(lines) == 1, lines
    match = LINE.fullmatch(lines[0])
    assert match and match.group(1) == signal.Signals(signum).name, lines[0]
    return int(match.group(2))


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _same_numbers(rows, reference_rows):
    """Every field but the wall clock equal; the mean training loss to float rounding."""
    assert len(rows) == len(reference_rows)
    for row, ref in zip(rows, reference_rows, strict=True):
        assert row.keys() == ref.keys()
        for key in row.keys() - set(TIMING):
            if key == "train_loss":
                assert row[key] == pytest.approx(ref[key], rel=1e-5), (row["epoch"], key)
            else:
                assert row[key] == ref[key], (row["epoch"], key)


@pytest.mark.timeout(600)
def test_in_process_run_stops_on_sigint_and_resumes_to_the_same_numbers(tmp_path, reference):
    out = tmp_path / "run"
    cmd = _cmd(out, "--workers", "0")
    code, output, took = _run(cmd, tmp_path / "first.log", out / "checkpoints" / "epoch-0002.pt",
                              signal.SIGINT)
    assert code == 130, output[-3000:]
    kept = _kept(output, signal.SIGINT)
    assert 2 <= kept < EPOCHS and took < 30
    assert [r["epoch"] for r in _rows(out)] == list(range(1, kept + 1))
    newest = max(out.glob("checkpoints/epoch-*.pt"))
    assert newest.name == f"epoch-{kept:04d}.pt"
    assert json.loads((out / "summary.json").read_text())["finished"] is False
    assert not (out / "final.pt").exists()

    code, output, _ = _run(cmd, tmp_path / "rerun.log")
    assert code == 0, output[-3000:]
    _same_numbers(_rows(out), _rows(reference))
    a, b = load_checkpoint(out / "final.pt"), load_checkpoint(reference / "final.pt")
    assert a["step"] == b["step"] == EPOCHS * 18
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-6)


def _stopped_ray_run(cmd, log, out, storage, trigger_epoch, signum):
    """One Ray run of `cmd`, sent `signum` once checkpoint `trigger_epoch` is on disk: the epoch
    its one line names, checked against the newest checkpoint on disk and the run directory."""
    code, output, took = _run(cmd, log, storage / f"epoch-{trigger_epoch:04d}" / "manifest.json",
                              signum)
    assert code == 128 + signum, output[-3000:]
    kept = _kept(output, signum)
    assert trigger_epoch <= kept < EPOCHS and took < 60
    newest_path, newest_rows = newest_complete(str(out / "ray"), "run")
    assert newest_path.endswith(f"epoch-{kept:04d}")  # the line names the newest one on disk
    assert _rows(out) == newest_rows  # the run directory caught up with it, and says no more
    assert [r["epoch"] for r in newest_rows] == list(range(1, kept + 1))
    return kept, output


def _resumed_after(output) -> set[tuple[str, str]]:
    return set(re.findall(r"resuming after epoch (\d+) \(step (\d+)\)", output))


def _settle(directory, quiet_s=3.0, limit_s=60.0):
    """Wait until nothing under `directory` has changed for `quiet_s` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        try:
            newest = max((p.stat().st_mtime for p in directory.rglob("*")), default=0.0)
        except FileNotFoundError:  # an old checkpoint removed meanwhile
            newest = time.time()
        if time.time() - newest >= quiet_s:
            return
        time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_ray_run_stopped_three_ways_resumes_each_time_to_the_same_numbers(tmp_path, reference):
    """One run on Ray stopped by SIGINT, resumed and stopped by SIGTERM, resumed and killed
    (SIGKILL to the driver and the local Ray it started) with its newest checkpoint then torn,
    and resumed to the end: three stops for four driver starts.

    Ray Train records a checkpoint only when its controller takes the report, which queues behind
    the upload: a run can stop with newer checkpoints on disk than recorded. Each rerun starts
    after the newest one on disk that loads and trains no epoch twice; after the kill, the torn
    one (a full disk or a copy cut short) is named in one line and its epochs are retrained to
    the same numbers, and Ray Train's own record of the checkpoints, torn as a kill can leave it,
    is set aside with one line instead of failing every rerun."""
    out = tmp_path / "run"
    storage = out / "ray" / "run"
    cmd = _cmd(out, "--workers", "1")
    kept, _ = _stopped_ray_run(cmd, tmp_path / "first.log", out, storage, 2, signal.SIGINT)
    before = _rows(out)
    again, output = _stopped_ray_run(cmd, tmp_path / "second.log", out, storage, kept + 2,
                                     signal.SIGTERM)
    assert _resumed_after(output) == {(str(kept), str(kept * 18))}  # Ray may echo a line twice
    assert _rows(out)[:kept] == before  # carried over, not trained again (same wall clock)
    before = _rows(out)

    code, output, _ = _run(cmd, tmp_path / "third.log", storage / f"epoch-{again + 2:04d}" /
                           "manifest.json", signal.SIGKILL, group=True)
    assert code == -signal.SIGKILL, output[-3000:]
    assert _resumed_after(output) == {(str(again), str(again * 18))}
    _settle(storage)  # Ray's worker processes can outlive the kill of the group by a moment
    seen = _rows(out)  # the callback may have written more rows before the kill landed
    assert seen[:again] == before and len(seen) >= again + 2
    # The rerun's workers start from the newest checkpoint directory in storage, whether or not
    # Ray Train's record lists it yet: that is the one to tear.
    newest = max(storage.glob("epoch-*"))
    older = sorted(p for p in storage.glob("epoch-*") if p.name < newest.name)
    torn = newest / "state.pt"
    if torn.exists():  # else the kill cut its asynchronous upload short: torn already
        torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    back = int(older[-1].name.removeprefix("epoch-"))
    record = storage / RAY_SNAPSHOT_FILE  # Ray Train's own record, torn too (seen after a kill)
    record.write_text(record.read_text()[: len(record.read_text()) // 2])
    print(f"stopped after epochs {kept} (SIGINT), {again} (SIGTERM), {len(seen)} (SIGKILL); "
          f"torn {newest.name}, back to {back}")

    code, output, _ = _run(cmd, tmp_path / "rerun.log")
    assert code == 0, output[-3000:]
    assert f"warning: checkpoint {torn} is unreadable" in output
    assert f"warning: Ray Train's checkpoint record {record} is unreadable" in output
    assert _resumed_after(output) == {(str(back), str(back * 18))}
    rows = _rows(out)
    assert rows[:back] == seen[:back]  # carried over, not recomputed (same wall-clock seconds)
    drop = lambda r: {k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
    assert [drop(r) for r in rows[back:len(seen)]] == [drop(r) for r in seen[back:]]  # retrained
    _same_numbers(rows, _rows(reference))
    assert json.loads((out / "summary.json").read_text())["finished"] is True
    tracked = {r["checkpoint_dir_name"] for r in
               json.loads((storage / RAY_SNAPSHOT_FILE).read_text())["checkpoint_results"]}
    assert {p.name for p in storage.glob("epoch-*")} == tracked  # none left behind
