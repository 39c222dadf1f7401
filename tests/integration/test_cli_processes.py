"""The CLIs as a person runs them, each in its own process: a bad input is one `error:` line,
exit status 2 and nothing written; `--help` shows an example. (The same errors in-process are
unit tests: tests/unit/test_reliability.py.)"""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SPACE = ROOT / "search_spaces" / "smoke.yaml"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "adr_scale.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    cases = [
        (["--preset", "smoke", "--set", "adr.tau_start=-2", "--out", str(out)], "adr.tau_start"),
        (["--preset", "nope", "--out", str(out)], "unknown preset 'nope'"),
        (["--preset", "cifar10_resnet18_at", "--set", f"data.root={tmp_path / 'empty'}",
          "--out", str(out)], "data.root"),
        (["--config", str(tmp_path / "none.yaml"), "--out", str(out)], "does not exist"),
    ]
    for args, needle in cases:
        res = _cli(*args, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr
        assert not out.exists()


def test_cli_help_shows_an_example(tmp_path):
    res = _cli("--help", cwd=tmp_path)
    assert res.returncode == 0 and "--preset smoke --out runs/smoke" in res.stdout


def test_missing_checkpoint_is_one_line_from_the_cli(tmp_path):
    missing = tmp_path / "nope.pt"
    proc = subprocess.run([sys.executable, "-m", "adr_scale.evaluate", "--checkpoint", str(missing)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"error: --checkpoint: {str(missing)!r} does not exist\n"


def test_tune_cli_refuses_a_bad_space_before_starting_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load(SMOKE_SPACE.read_text())
    bad.write_text(yaml.safe_dump(raw | {"sampler": {"type": "grid"}}))
    res = subprocess.run([sys.executable, "-m", "adr_scale.tune", "--space", str(bad),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "sampler.type: invalid value 'grid'; allowed: random, tpe" in res.stderr
    assert not (tmp_path / "out").exists()
