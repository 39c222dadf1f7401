"""The real standard AutoAttack (pyautoattack: APGD-CE, APGD-T, FAB-T, Square) end to end on the
tiny model of tests/unit/test_evaluate.py: below PGD-10, below clean, report.json's fields, and a
rerun that reads the finished state. About 7 CPU s: over the unit tier's budget."""

import json
import time

import pytest
import torch

from adr_scale import evaluate as ev

EPS = 16 / 255  # the smoke preset's training radius (digits are 8x8: 8/255 barely moves them)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


from tests.unit.test_evaluate import _opts, run_dir  # noqa: E402, F401 (the unit tier's model)


@pytest.mark.slow
def test_autoattack_below_pgd_below_clean_and_report(run_dir, tmp_path):
    """The real standard AutoAttack (pyautoattack) on 32 test images; report.json's fields."""
    opts = _opts(attacks=["clean", "pgd10", "autoattack"], n_examples=32)
    start = time.perf_counter()
    report = ev.evaluate_checkpoint(run_dir / "final.pt", tmp_path / "eval", opts)
    seconds = time.perf_counter() - start
    acc = {k: v["accuracy"] for k, v in report["attacks"].items()}
    print(f"tiny model, 32 digits, eps 16/255: {acc}; {seconds:.1f} s")
    assert acc["autoattack"] <= acc["pgd10"] <= acc["clean"]
    assert acc["autoattack"] < acc["clean"] and acc["pgd10"] < acc["clean"]
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["checkpoint"] == str((run_dir / "final.pt").resolve())
    assert (saved["epoch"], saved["model"], saved["split"], saved["n"]) == (4, "student", "test", 32)
    assert saved["eps"] == EPS and saved["versions"]["pyautoattack"] == "0.2.0"
    assert saved["versions"]["torch"] == torch.__version__
    for name, entry in saved["attacks"].items():
        assert entry["n"] == 32 and entry["seconds"] >= 0
        assert entry["correct"] == round(entry["accuracy"] * 32)
        assert entry["eps"] == (0.0 if name == "clean" else EPS)
    aa = saved["attacks"]["autoattack"]
    assert aa["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (aa["version"], aa["backend"], aa["n_target_classes"]) == ("standard", "pyautoattack", 9)
    assert aa["per_attack"]["clean"] == acc["clean"]
    chain = list(aa["per_attack"].values())
    assert chain == sorted(chain, reverse=True) and chain[-1] == acc["autoattack"]
    assert 0 < aa["max_perturbation"] <= EPS + 1e-6
    assert set(aa["attack_seconds"]) == set(aa["attacks"])  # every attack ran (none left robust=0)
    print(f"AutoAttack seconds per attack: {aa['attack_seconds']}, total {aa['seconds']}")
    assert isinstance(aa["warnings"], list) and aa["resumed"] is False
    assert all(c["passed"] for c in saved["checks"]), saved["checks"]
    assert {c["name"] for c in saved["checks"]} >= {"autoattack_at_most_pgd10"}
    md = (tmp_path / "eval" / "report.md").read_text()
    assert f"| AutoAttack | {100 * acc['autoattack']:.2f} |" in md
    # Rerunning finds the finished state file: the same numbers at once.
    start = time.perf_counter()
    again = ev.evaluate_checkpoint(run_dir / "final.pt", tmp_path / "eval",
                                   _opts(attacks=["autoattack"], n_examples=32))
    assert time.perf_counter() - start < 5
    assert again["attacks"]["autoattack"]["resumed"] is True
    assert again["attacks"]["autoattack"]["accuracy"] == acc["autoattack"]
