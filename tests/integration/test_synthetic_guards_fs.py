"""An empty, unwritable data.synthetic_cache for real: a read-only tmpfs mounted in a user + mount
namespace (another process), where train refuses in one line in-process and on Ray's driver
before writing run files. The other cache faults are tests/unit/test_synthetic_guards.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.unit.test_synthetic_guards import shards  # noqa: E402, F401 (the unit tier's fixture)

_ON_READ_ONLY_FS = r"""
import contextlib, io, json, os, sys
from adr_scale import train

shards, ro, out, result = sys.argv[1:5]
got = {}
for workers in ("0", "1"):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = train.main(["--preset", "smoke", "--no-progress", "--workers", workers,
                         "--set", "train.device=cpu", "--set", f"data.synthetic={shards}",
                         "--set", f"data.synthetic_cache={ro}", "--set",
                         "data.synthetic_fraction=0.75", "--out", f"{out}{workers}"])
    got[workers] = {"rc": rc, "err": err.getvalue(), "out": os.path.exists(f"{out}{workers}")}
json.dump(got, open(result, "w"))
"""


@pytest.mark.slow
def test_an_empty_cache_directory_on_a_read_only_file_system(shards, tmp_path):
    """An empty data.synthetic_cache on a real read-only tmpfs (EROFS, which binds root too), mounted in a user + mount namespace; train in-process and on Ray."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o ro none {ro}"]).returncode:
        pytest.skip("needs `unshare -rm` (unprivileged user and mount namespaces) to mount a tmpfs")
    (tmp_path / "case.py").write_text(_ON_READ_ONLY_FS)
    script = (f"mount -t tmpfs -o ro,size=4k none {ro} && exec {sys.executable} "
              f"{tmp_path / 'case.py'} {shards} {ro} {tmp_path / 'run'} {tmp_path / 'got.json'}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for workers, got in json.loads((tmp_path / "got.json").read_text()).items():
        assert got["rc"] == 2 and not got["out"], (workers, got)
        assert got["err"] == (f"error: data.synthetic_cache: cannot write to {str(ro)!r} (Read-only "
                              "file system); allowed: a writable node-local directory (point "
                              "data.synthetic_cache at one, e.g. on the node's local disk)\n")
