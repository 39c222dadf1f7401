"""A killed driver (and the local Ray it started) is resumed by rerunning the same command.

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


@pytest.mark.timeout(400)
def test_killed_driver_resumes_with_the_same_command(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "adr_scale.train", "--preset", "smoke", "--set", "train.epochs=3",
           "--set", "train.device=cpu", "--set", "attack.eval_steps=2",  # a cheaper validation
           "--out", str(out), "--no-progress"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
    deadline = time.monotonic() + 200
    seen: list[dict] = []
    while time.monotonic() < deadline and len(seen) < 1:
        time.sleep(0.2)
        try:
            seen = _rows(out)
        except (OSError, ValueError):
            pass
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
    first.wait()
    assert len(seen) >= 1, "the first run never finished an epoch"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming after epoch" in done.stdout + done.stderr
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # epochs finished before the kill are carried over, not recomputed (same wall-clock seconds)
    assert rows[:len(seen)] == seen
    assert json.loads((out / "summary.json").read_text())["finished"] is True
