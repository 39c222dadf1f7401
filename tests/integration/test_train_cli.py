"""A killed driver (and the local Ray it started) is resumed by rerunning the same command, from
the newest checkpoint that loads when the latest one is torn.

Its own module: the CLI starts its own Ray, so no other test's cluster may be alive meanwhile.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


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


TIMING = ("seconds", "samples_per_s")  # wall-clock fields of a row; the rest is reproducible


@pytest.mark.timeout(600)  # two local Ray starts: a minute or more each on a loaded machine
def test_killed_driver_resumes_with_the_same_command(tmp_path):
    """Killed after two epochs (or later: epochs take seconds); the newest checkpoint's state.pt is
    then truncated (a full disk or a copy cut short): the rerun says so in one line, resumes from
    the newest older checkpoint and retrains the lost epochs to the same numbers."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "adr_scale.train", "--preset", "smoke", "--set", "train.epochs=6",
           "--set", "train.device=cpu", "--set", "attack.eval_steps=2",  # a cheaper validation
           "--out", str(out), "--no-progress"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    seen: list[dict] = []
    while time.monotonic() < deadline and len(seen) < 2:
        time.sleep(0.2)
        try:
            seen = _rows(out)
        except (OSError, ValueError):
            pass
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
    first.wait()
    storage = out / "ray" / "run"
    _settle(storage)  # Ray's worker processes can outlive the kill of the group by a moment
    seen = _rows(out)  # the callback may have written more rows before the kill landed
    assert len(seen) >= 2, f"the first run finished {len(seen)} epochs before the kill"
    # The rerun's workers start from the newest checkpoint directory in storage, whether or not
    # Ray Train's record lists it yet (reports queue behind uploads): that is the one to tear.
    newest = max(storage.glob("epoch-*"))
    older = sorted(p for p in storage.glob("epoch-*") if p.name < newest.name)
    assert older, "no older checkpoint to fall back to"
    torn = newest / "state.pt"
    if torn.exists():  # else the kill cut its asynchronous upload short: torn already
        torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    back = int(older[-1].name.removeprefix("epoch-"))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-2000:]
    assert f"warning: checkpoint {torn} is unreadable" in log
    assert f"resuming after epoch {back} " in log
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[:back] == seen[:back]  # carried over, not recomputed (same wall-clock seconds)
    drop = lambda r: {k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
    assert [drop(r) for r in rows[back:len(seen)]] == [drop(r) for r in seen[back:]]  # retrained
    assert json.loads((out / "summary.json").read_text())["finished"] is True
