"""Faults that need a second process: a real second run on one --out is refused naming the
holder (a stale lock does not block), and every entry point on a real read-only and a real full
file system (tmpfs in a user + mount namespace) ends in one line with nothing left behind."""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adr_scale.checkpoint import checkpoint_state
from adr_scale.engine import build_state
from adr_scale.run.lock import LOCK_FILE

# as in tests/unit/test_reliability.py: 2 steps per epoch, a run of a few epochs in ~1 s
FAST = ["train.device=cpu", "train.batch_size=512", "data.val_size=100", "attack.steps=2",
        "attack.eval_steps=2", "train.log_every=1"]


from tests.unit.test_reliability import _cfg, _cli, _error_line, digits  # noqa: E402, F401

# -- one run per --out: a real second process is refused; stale locks do not block ---------


HOLDER = """
import sys
from adr_scale.run.lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_second_run_on_one_out_is_refused_naming_the_holder(digits, tmp_path, capsys):
    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _cli(out, "train.epochs=1") == 2
        line = _error_line(capsys)
        assert (f"error: --out: '{out}' is in use by pid {holder.pid} on host "
                f"{socket.gethostname()}") in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: a stale lock
        holder.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid
    assert _cli(out, "train.epochs=1") == 0  # the dead pid's lock is taken over
    assert not (out / LOCK_FILE).exists()  # and released on exit


# -- on real file systems: a read-only and a full tmpfs in a user + mount namespace ---------

# Run inside `unshare -rm` (no root needed where unprivileged user namespaces are allowed): each
# entry point in-process, its exit status, its stderr and what it left on the tmpfs.
_FS_CASES = r'''
import contextlib, io, json, os, sys
from adr_scale import evaluate as ev, train, tune

ckpt, space, result = sys.argv[1:4]
bases = {"ro": "/mnt/ro", "full": "/mnt/full", "nearly": "/mnt/nearly"}
calls = {
    "train": (train.main, ["--preset", "smoke", "--workers", "0", "--no-progress", "--set",
                           "train.device=cpu", "--set", "train.max_steps=2", "--out", "{}/run"]),
    "tune": (tune.main, ["--space", space, "--out", "{}/search"]),
    "evaluate": (ev.main, ["--checkpoint", ckpt, "--attacks", "clean", "--no-progress",
                           "--out", "{}/eval"]),
    "export": (ev.main, ["--checkpoint", ckpt, "--attacks", "clean", "--no-progress",
                         "--export", "{}/zoo"]),
}
cases = {}
for kind, name in [(k, n) for k in ("ro", "full") for n in calls] + [("nearly", "train")]:
    main, args = calls[name]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([a.format(bases[kind]) for a in args])
        except BaseException as exc:
            rc = f"raised {type(exc).__name__}: {exc}"
    cases[f"{name} {kind}"] = {"rc": rc, "err": err.getvalue(), "left": sorted(os.listdir(bases[kind]))}
json.dump(cases, open(result, "w"))
'''


_MOUNTS = ("mount -t tmpfs -o ro,size=64k none {d}/ro && mount -t tmpfs -o size=64k none {d}/full "
           "&& head -c 65536 /dev/zero > {d}/full/fill; mount -t tmpfs -o size=64k none {d}/nearly"
           " && head -c 40960 /dev/zero > {d}/nearly/fill")  # full: 0 bytes free; nearly: 24 KiB


def _namespaces_work(tmp_path) -> bool:
    import shutil

    if not shutil.which("unshare"):
        return False
    (tmp_path / "probe").mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=4k none {tmp_path / 'probe'}"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_read_only_and_full_out_are_one_line_on_real_file_systems(digits, tmp_path):
    """--out of train, tune and evaluate and evaluate --export on a real read-only tmpfs (EROFS)
    and a real full one (ENOSPC; train also with room for its lock and config but not for a
    checkpoint): exit 2, one `error:` line naming the path, and no lock or run directory left."""
    if not _namespaces_work(tmp_path):
        pytest.skip("needs `unshare -rm` (unprivileged user and mount namespaces) to mount a tmpfs")
    mnt = tmp_path / "mnt"
    for kind in ("ro", "full", "nearly"):
        (mnt / kind).mkdir(parents=True)
    state = build_state(_cfg(), digits.info, len(digits.train), torch.device("cpu"))
    torch.save(checkpoint_state(state), tmp_path / "best.pt")
    (tmp_path / "cases.py").write_text(_FS_CASES.replace("/mnt/", f"{mnt}/"))
    space = Path(__file__).parents[2] / "tests" / "assets" / "ci_space.yaml"
    script = (_MOUNTS.format(d=mnt) + f" && exec {sys.executable} {tmp_path / 'cases.py'} "
              f"{tmp_path / 'best.pt'} {space} {tmp_path / 'cases.json'}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cases = json.loads((tmp_path / "cases.json").read_text())
    expected = {"ro": r"cannot write to '{}' \(.*[Rr]ead-only", "full": r"no space left on '{}",
                "nearly": r"no space left on '{}/checkpoints' \(writing epoch-0001.pt\)"}
    import re

    for case, got in cases.items():
        name, kind = case.split()
        flag = "--export" if name == "export" else "--out"
        where = f"{mnt / kind}/" + {"train": "run", "tune": "search", "evaluate": "eval",
                                     "export": "zoo"}[name]
        lines = got["err"].strip().splitlines()
        assert got["rc"] == 2 and len(lines) == 1, (case, got)
        assert re.fullmatch(f"error: {flag}: " + expected[kind].format(re.escape(where)) + ".*",
                            lines[0]), (case, lines[0])
        if name in ("train", "tune") and kind != "nearly":  # the lock and its directory are gone
            assert got["left"] == ([] if kind == "ro" else ["fill"]), (case, got["left"])
    assert len(cases) == 9
