"""The decoded synthetic cache built by real processes: 2 spawned decode workers give the bytes of
the in-process parser, and two processes that ask for one cache at once build it once."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from adr_scale.data.synthetic import SyntheticSet

N, SHARD = 2000, 500  # 4 shards, as in tests/unit/test_synthetic.py


# the unit tier's fixtures: the same shards and cache
from tests.unit.test_synthetic import shards, synth  # noqa: E402, F401


def test_both_parsers_and_worker_processes_build_the_same_bytes(shards, synth, tmp_path):
    """webdataset's reader in 2 spawned processes and our parser in-process: identical caches."""
    other = SyntheticSet(shards[0], tmp_path, tar_reader="fast", workers=1, progress=False)
    parallel = SyntheticSet(shards[0], tmp_path / "p", tar_reader="webdataset", workers=2,
                            progress=False)
    for name in ("images.u8", "labels.i64"):
        ref = (synth.cache_path / name).read_bytes()
        assert (other.cache_path / name).read_bytes() == ref
        assert (parallel.cache_path / name).read_bytes() == ref
    assert json.loads((parallel.cache_path / "meta.json").read_text())["tar_reader"] == "webdataset"


def test_cache_is_built_once_for_two_concurrent_processes(shards, tmp_path):
    """Both processes queue on the lock (held here first); one builds, the other maps its result."""
    import hashlib

    from adr_scale.data.synthetic_cache import build_lock

    code = ("import hashlib; from adr_scale.data.synthetic import SyntheticSet; "
            f"s = SyntheticSet({str(shards[0])!r}, {str(tmp_path / 'cache')!r}, workers=1, progress=False); "
            "print(s.built, hashlib.sha256(s.batch(3, 64, seed=0, rank=0)[0].numpy()).hexdigest())")
    digest = hashlib.sha256((shards[0] / "manifest.parquet").read_bytes()).hexdigest()
    (tmp_path / "cache").mkdir()
    errs = [tmp_path / f"err{i}" for i in range(2)]
    with build_lock(tmp_path / "cache" / f"{digest}.lock"):
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                  stderr=open(err, "w")) for err in errs]
        deadline = time.monotonic() + 120
        while not all("waiting for" in e.read_text() for e in errs):  # both queue behind us
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.1)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.read_text() for e in errs]
    assert sorted(out.split()[0] for out in outs) == ["False", "True"], outs
    assert outs[0].split()[1] == outs[1].split()[1]  # the same batch from the one cache
    assert not list((tmp_path / "cache").glob(".*.tmp"))
