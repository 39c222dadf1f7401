"""generate_ddpm through Ray: a driver interrupted with Ctrl-C, then resumed, gives the same bytes
as an in-process run (so placement and worker count do not matter) and leaves no partial shard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_pipeline import generate_ddpm, verify
from data_pipeline.shards import read_manifest
from data_pipeline.smoke import tiny_labeler, tiny_unet

REPO = Path(__file__).resolve().parents[2]
# 4 shards of a few seconds each, one task per CPU: Ctrl-C lands after the first one or two
N, SHARD, STEPS = 40, 10, 200


def _argv(assets: dict, out: Path) -> list[str]:
    return ["--model", assets["unet"], "--labeler", assets["labeler"], "--num-images", str(N),
            "--shard-size", str(SHARD), "--steps", str(STEPS), "--batch-size", "8", "--seed", "3",
            "--out", str(out), "--no-progress",
            # the in-process reference samples on the CPU; on a GPU host the default would be 1
            "--gpus-per-task", "0"]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    unet = tiny_unet(root / "unet")
    return {"unet": str(unet), "labeler": str(tiny_labeler(root / "labeler.pt", unet))}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_then_resume_through_ray_matches_in_process_run(assets, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as inside a 1-CPU Ray task
    try:
        ref = tmp_path / "reference"
        spec = generate_ddpm.build_spec(generate_ddpm.parse_args(_argv(assets, ref)))
        generate_ddpm.generate(spec, ref, use_ray=False, progress=False)
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "ray"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen([sys.executable, "-m", "data_pipeline.generate_ddpm",
                               *_argv(assets, out)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    while not list(out.glob("shard-*.tar")) and driver.poll() is None:
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.05)
    driver.send_signal(signal.SIGTERM)  # a scheduler stops it while shards are being sampled
    log = driver.communicate(timeout=120)[0]
    assert driver.returncode == 143, log  # 128 + SIGTERM
    assert f"interrupted (SIGTERM): finished shards are kept in {out}" in log
    assert "rerun the same command to resume" in log
    finished = sorted(p.name for p in out.glob("shard-*.tar"))
    assert 1 <= len(finished) < N // SHARD, finished
    # whatever is visible is whole: listed shards verify, the rest is only missing
    problems = [line for line in verify.problems(out)[0] if not line.startswith("missing:")]
    assert problems == []
    assert set(read_manifest(out).rows) <= set(finished)
    before = {name: (out / name).stat().st_mtime_ns for name in finished}

    assert generate_ddpm.main(_argv(assets, out)) == 0  # a local Ray again, in this process
    assert _files(out) == _files(ref)
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == before
    assert not list(out.glob(".*.tmp"))
    assert verify.main([str(out)]) == 0
