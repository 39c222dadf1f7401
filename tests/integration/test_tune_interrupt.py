"""Stop means stop, resume means resume: real signals to a real search on a local Ray.

One search (scheduler none, 4 trials of 1 epoch, then a confirmation of 3 schedules x 1 seed at 2
epochs) is stopped three ways in a row: SIGINT to its process group (Ctrl-C) during the search
phase, SIGTERM to the driver during the confirmation, then run to its end. Each stop must exit
130 / 143 with one line, start no confirmation after an interrupted search, write no best.yaml
that claims a confirmation, never print nan or an empty seed list; the last run must finish with
a confirmed winner and real numbers."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _space(tmp_path: Path) -> Path:
    raw = yaml.safe_load(open("tests/assets/ci_space.yaml"))
    raw |= {"budget": {"epochs": 1}, "num_samples": 4, "max_concurrent": 2, "scheduler": {"type": "none"},
            "confirm": {"mode": "grid", "top_k": 1, "seeds": 1, "max_concurrent": 2},
            "long_run": {"train.epochs": 2}}
    raw["fixed"]["attack.eval_steps"] = 3
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _wait_for(proc: subprocess.Popen, found, what: str, log: Path, limit_s: float = 400) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if found():
            return
        assert proc.poll() is None, f"ended before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no {what} within {limit_s} s:\n{log.read_text()[-3000:]}")


def _checkpoints(storage: Path, prefix: str) -> list[Path]:
    return [p for p in storage.glob(f"{prefix}*/epoch-*") if p.is_dir()]


def _no_false_claim(out: Path, text: str) -> None:
    assert "nan" not in text and "seeds []" not in text, text[-3000:]
    for name in ("report.md", "best.yaml"):
        if (out / name).exists():
            body = (out / name).read_text()
            assert "nan %" not in body and "seeds []" not in body, body[:2000]


@pytest.mark.timeout(1500)
def test_a_stopped_search_claims_nothing_and_the_same_command_finishes_it(tmp_path):
    out, space = tmp_path / "search", _space(tmp_path)
    storage = out / "ray"
    cmd = [sys.executable, "-m", "adr_scale.tune", "--space", str(space), "--out", str(out)]

    # 1. Ctrl-C (SIGINT to the process group) once the first search trial has a checkpoint
    log1 = tmp_path / "first.log"
    first = _start(cmd, log1)
    _wait_for(first, lambda: _checkpoints(storage, "smoke-"), "search checkpoint", log1)
    os.killpg(first.pid, signal.SIGINT)
    code = first.wait(timeout=180)
    text = log1.read_text()
    assert code == 130, text[-3000:]
    line = [x for x in text.splitlines() if x.startswith("interrupted (SIGINT): ")]
    assert len(line) == 1 and line[0].endswith(
        "search trials finished, no confirmation started; rerun the same command to resume"), text
    done = int(line[0].split(": ")[1].split(" of ")[0])
    assert 0 <= done < 4 and " of 4 " in line[0]
    assert "confirming" not in text and not list(storage.glob("smoke-confirm*"))
    assert not (out / "best.yaml").exists() and not (out / "report.md").exists()
    _no_false_claim(out, text)

    # 2. SIGTERM to the driver once the first confirmation run has a checkpoint
    log2 = tmp_path / "second.log"
    second = _start(cmd, log2)
    _wait_for(second, lambda: _checkpoints(storage, "smoke-confirm-"), "confirmation checkpoint",
              log2, limit_s=600)
    second.send_signal(signal.SIGTERM)
    code = second.wait(timeout=180)
    text = log2.read_text()
    assert code == 143, text[-3000:]
    assert "resuming the search in" in text and "confirming 3 schedules" in text
    line = [x for x in text.splitlines() if x.startswith("interrupted (SIGTERM): ")]
    assert len(line) == 1 and "of confirmation round 1 finished, no winner written" in line[0], text
    assert "confirmed winner" not in text
    best = (out / "best.yaml").read_text()  # the search's best trial, not called confirmed
    assert best.startswith("# Best schedule of search") and "Confirmed" not in best
    report = (out / "report.md").read_text()
    assert "4 trials (4 completed)" in report and "## Confirmation at full length" not in report
    _no_false_claim(out, text)

    # 3. the same command finishes: the finished runs are reused, the winner is confirmed
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                           env=os.environ | {"PYTHONUNBUFFERED": "1"})
    text = third.stdout + third.stderr
    assert third.returncode == 0, text[-3000:]
    assert "confirming 3 schedules" in text
    assert [x for x in third.stdout.splitlines()[-3:] if x.startswith("confirmed winner: ")]
    rows = [x for x in third.stdout.splitlines() if x.startswith("  full length ")]
    assert len(rows) == 3 and all("(seeds [0])" in r for r in rows), rows
    best = (out / "best.yaml").read_text()
    assert best.startswith("# Confirmed winner of search 'smoke'")
    assert "## Confirmation at full length" in (out / "report.md").read_text()
    _no_false_claim(out, text)
