"""adr_scale.evaluate on a tiny model trained once per module: attacks, reports, sanity, export,
CLI errors. The real standard AutoAttack end to end: tests/integration/test_evaluate_autoattack.py."""

import json
import shutil
import signal

import pytest
import torch

from adr_scale import evaluate as ev
from adr_scale.checkpoint import load_checkpoint
from adr_scale.config import ConfigError, apply_overrides, get_preset
from adr_scale.data import to_float
from adr_scale.drivers import fit
from adr_scale.evaluate import autoattack as ev_autoattack
from adr_scale.evaluate import cli as ev_cli
from adr_scale.evaluate import sanity as ev_sanity
from adr_scale.models import create_model

EPS = 16 / 255  # the smoke preset's training radius (digits are 8x8: 8/255 barely moves them)


pytestmark = pytest.mark.usefixtures("one_thread", "no_run_plots")  # tests/conftest.py


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "run"
    cfg = apply_overrides(get_preset("smoke"), ["train.device=cpu", "train.epochs=4"])
    fit(cfg, out, progress=False)
    return out


def _opts(**kw):
    base = dict(eps=EPS, device="cpu", progress=False, batch_size=64)
    return ev.EvalOptions(**(base | kw))


# ---------------------------------------------------------------------------------------------
# Input parsing


def test_attack_list_and_eps_are_validated():
    assert ev.parse_attacks("clean, PGD10,pgd100,autoattack,clean") == [
        "clean", "pgd10", "pgd100", "autoattack"]
    assert ev.parse_attacks("autoattack-plus") == ["autoattack-plus"]
    for bad in ("pgd", "pgd0", "fgsm", "pgd-10", ""):
        with pytest.raises(ConfigError, match=rf"^--attacks: invalid value '{bad}'; allowed: "
                                              r"clean, pgdK .* autoattack, autoattack-plus$"):
            ev.parse_attacks(f"clean,{bad}")
    assert ev.parse_eps("8/255") == 8 / 255 and ev.parse_eps("0.5") == 0.5
    for bad in ("0", "8/0", "two", "2"):
        with pytest.raises(ConfigError, match=rf"^--eps: invalid value '{bad}'"):
            ev.parse_eps(bad)


# ---------------------------------------------------------------------------------------------
# AutoAttack


def _custom_autoattack(model):
    """The official attacks, shortened (10 iterations, 3 targets) so a test takes a second."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], seed=0)
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = 10
    aa.apgd_targeted.n_target_classes = 3
    return aa


def test_batched_driver_matches_autoattack_and_resumes(run_dir, tmp_path, monkeypatch):
    loaded = ev.load_model(run_dir / "final.pt")
    test = ev.load_test_set(loaded.cfg, None, 40)
    x, y = to_float(test.images), test.labels
    _, y_adv = _custom_autoattack(loaded.module).run_standard_evaluation(x, y, batch_size=16)
    backend = ev.autoattack_backend()
    whole = ev.run_autoattack(_custom_autoattack(loaded.module), backend, x, y, batch_size=16)
    assert torch.equal(whole.robust, y_adv == y)  # the library's own loop, example by example
    assert whole.per_attack["clean"] >= whole.per_attack["apgd-ce"] >= whole.per_attack["apgd-t"]
    assert whole.per_attack["apgd-t"] == ev.accuracy(whole.robust) < whole.per_attack["clean"]

    state = tmp_path / "aa.state.json"
    calls = []
    real_chunk = ev.attack_chunk

    def interrupted(*args):
        if len(calls) == 3:  # apgd-ce's 3 batches done, then killed inside apgd-t
            raise KeyboardInterrupt
        calls.append(args[2])
        return real_chunk(*args)

    monkeypatch.setattr(ev_autoattack, "attack_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ev.run_autoattack(_custom_autoattack(loaded.module), backend, x, y, batch_size=16,
                          state_path=state, fingerprint={"test": 1})
    saved = json.loads(state.read_text())
    assert calls == ["apgd-ce"] * 3 and saved["done"] == ["apgd-ce"] and saved["queue"] is None
    monkeypatch.setattr(ev_autoattack, "attack_chunk", real_chunk)
    resumed = ev.run_autoattack(_custom_autoattack(loaded.module), backend, x, y, batch_size=16,
                                state_path=state, fingerprint={"test": 1})
    assert resumed.resumed and torch.equal(resumed.robust, whole.robust)
    assert resumed.per_attack == whole.per_attack
    fresh = ev.run_autoattack(_custom_autoattack(loaded.module), backend, x, y, batch_size=16,
                              state_path=state, fingerprint={"test": 2})  # another evaluation
    assert not fresh.resumed and torch.equal(fresh.robust, whole.robust)
    saved = json.loads(state.read_text())
    assert ev_autoattack._read_state(state, saved["fingerprint"]) is not None
    state.write_text(json.dumps(saved | {"format": 99}))  # the format is checked, not only written
    assert ev_autoattack._read_state(state, saved["fingerprint"]) is None


def test_autoattack_warnings_reach_the_report(run_dir, tmp_path):
    """A model that outputs probabilities trips AutoAttack's own check; we must surface it."""
    loaded = ev.load_model(run_dir / "final.pt")
    test = ev.load_test_set(loaded.cfg, None, 16)
    probs = torch.nn.Sequential(loaded.module, torch.nn.Softmax(dim=1)).eval()
    aa = _custom_autoattack(probs)
    aa.attacks_to_run = ["apgd-ce"]
    out = ev.run_autoattack(aa, ev.autoattack_backend(), to_float(test.images), test.labels,
                            batch_size=16)
    assert any("probability distribution" in w for w in out.warnings), out.warnings


# ---------------------------------------------------------------------------------------------
# Sanity checks


def test_sanity_sweeps_fall_to_zero_and_do_not_rise(run_dir, tmp_path):
    loaded = ev.load_model(run_dir / "final.pt")
    test = ev.load_test_set(loaded.cfg, None, 64)
    clean = ev.accuracy(ev.clean_flags(loaded.module, test, batch_size=64, device="cpu"))
    sanity = ev.sanity_checks(loaded.module, test, eps=EPS, clean_acc=clean, batch_size=64,
                              device=torch.device("cpu"), seed=0, out=tmp_path)
    eps_acc, steps_acc = sanity["eps_sweep_acc"], sanity["steps_sweep_acc"]
    assert sanity["eps_255"][0] == 0 and sanity["eps_255"][-1] == 128 and 16 in sanity["eps_255"]
    assert eps_acc[0] == clean > 0.5 and eps_acc[-1] == 0.0
    tol = 1 / 64
    assert all(b <= a + tol for a, b in zip(eps_acc, eps_acc[1:], strict=False)), eps_acc
    assert all(b <= a + tol for a, b in zip(steps_acc, steps_acc[1:], strict=False)), steps_acc
    assert steps_acc[0] < clean
    assert {c["name"]: c["passed"] for c in sanity["checks"]} == {
        "eps0_equals_clean": True, "eps_sweep_non_increasing": True,
        "large_eps_reaches_zero": True, "steps_sweep_non_increasing": True}
    assert (tmp_path / "sanity.png").stat().st_size > 10_000


def test_failed_sanity_check_is_flagged_with_a_reason():
    ok = ev._non_increasing("s", [10, 20, 50], [0.50, 0.51, 0.49], 100, "steps")
    assert ok["passed"]  # +1 point is inside one standard error (5 points at n = 100)
    bad = ev._non_increasing("s", [10, 20, 50], [0.50, 0.40, 0.60], 100, "steps")
    assert not bad["passed"] and "rises from 40.00% at steps 20 to 60.00% at 50" in bad["reason"]
    assert ev.tolerance(0.5, 100) == pytest.approx(0.05) and ev.tolerance(0.0, 100) == 0.01


def test_failed_checks_print_a_warning(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ev_sanity, "SANITY_EPS_255", (0, 1, 2))  # too small a radius to reach 0 %
    ev.evaluate_checkpoint(run_dir / "final.pt", tmp_path, _opts(attacks=["clean"], n_examples=32,
                                                                  sanity=True))
    err = capsys.readouterr().err
    assert "warning: check large_eps_reaches_zero failed: PGD-20 at eps 16/255 leaves" in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert any("large_eps_reaches_zero failed" in w for w in report["warnings"])
    assert "| large_eps_reaches_zero | **NO** |" in (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# Errors


def test_file_that_is_not_a_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert ev.main(["--checkpoint", str(junk), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --checkpoint: {str(junk)!r} is not a PyTorch checkpoint")
    assert err.count("\n") == 1
    weights = tmp_path / "weights.pt"  # a bare state_dict is not a training checkpoint either
    torch.save(create_model("tiny", 10, in_channels=1).state_dict(), weights)
    assert ev.main(["--checkpoint", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "is not an adr_scale training checkpoint" in err and err.count("\n") == 1


def test_weights_of_another_architecture(run_dir, tmp_path, capsys):
    ckpt = load_checkpoint(run_dir / "final.pt")
    other = create_model("tiny_nonorm", 10, in_channels=1).state_dict()
    ckpt["model"] = ckpt["ema"] = other
    path = tmp_path / "swapped.pt"
    torch.save(ckpt, path)
    assert ev.main(["--checkpoint", str(path), "--attacks", "clean", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {str(path)!r}: its student weights do not fit "
                          "model.arch='tiny' of its config (")
    assert err.count("\n") == 1 and "missing" in err
    assert not (tmp_path / "eval-swapped").exists()  # nothing written for a bad checkpoint


def test_bad_option_values_are_one_line_errors(run_dir, capsys):
    ckpt = str(run_dir / "final.pt")
    cases = [(["--attacks", "clean,pgdx"], "error: --attacks: invalid value 'pgdx'; allowed: "),
             (["--n-examples", "5000", "--attacks", "clean"],
              "error: --n-examples: invalid value 5000; allowed: 1 to 297"),
             (["--batch-size", "0"], "error: --batch-size: invalid value 0")]
    for args, expected in cases:
        assert ev.main(["--checkpoint", ckpt, "--device", "cpu", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------------------
# Export


def test_export_loads_with_identical_predictions(run_dir, tmp_path):
    loaded = ev.load_model(run_dir / "final.pt", "ema")
    ev.export_model(loaded, tmp_path / "zoo", EPS)
    meta = json.loads((tmp_path / "zoo" / "model.json").read_text())
    assert {k: meta[k] for k in ("architecture", "num_classes", "activation", "in_channels",
                                 "dataset")} == {"architecture": "tiny", "num_classes": 10,
                                                 "activation": "relu", "in_channels": 1,
                                                 "dataset": "digits"}
    assert meta["mean"] == [0.3053] and meta["std"] == [0.3759] and meta["eps"] == EPS
    state = torch.load(tmp_path / "zoo" / "model.pt", weights_only=True)
    assert "normalize.mean" in state  # normalisation travels inside the weights
    model = ev.load_exported(tmp_path / "zoo")
    assert not model.training
    x = to_float(ev.load_test_set(loaded.cfg, None, None).images)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.module(x))
    student = ev.load_model(run_dir / "final.pt", "student").module
    with torch.no_grad():
        assert not torch.equal(model(x), student(x))  # it exported the EMA network, not this one
    with pytest.raises(ConfigError, match="load_exported: .*model.json' does not exist"):
        ev.load_exported(tmp_path)
    (tmp_path / "zoo" / "model.json").write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(ConfigError, match="has format 99; allowed: 1"):  # checked, not only written
        ev.load_exported(tmp_path / "zoo")


# ---------------------------------------------------------------------------------------------
# A run directory


def test_run_fills_summary_json_and_md(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("eval*"))
    old_summary = json.loads((run / "summary.json").read_text())
    head = "# digits tiny\n\nsome text\n\n## Validation split\n\n| a | b |\n\n"
    tail = "## Notes\n\nkeep me\n"
    (run / "summary.md").write_text(head + "## Test set (adr_scale.evaluate)\n\nNot evaluated "
                                    "yet.\n\n" + tail)
    args = ["--run", str(run), "--attacks", "clean,pgd10", "--eps", "16/255", "--n-examples",
            "48", "--device", "cpu", "--no-progress", "--export", str(tmp_path / "zoo")]
    assert ev.main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert {k: summary[k] for k in old_summary} == old_summary  # existing keys kept
    test = summary["test"]
    assert (test["split"], test["n"], test["eps"], test["model"]) == ("test", 48, EPS, "student")
    assert test["best"]["epoch"] == old_summary["best_epoch"]
    assert test["final"]["epoch"] == old_summary["final_epoch"]
    for name in ("clean", "pgd10"):
        best, final = test["best"]["accuracy"][name], test["final"]["accuracy"][name]
        assert test["diff"][name] == pytest.approx(best - final)
        assert 0 <= final <= 1
    assert test["best"]["accuracy"]["pgd10"] < test["best"]["accuracy"]["clean"]
    best_report = json.loads((run / "eval" / "best" / "report.json").read_text())
    assert best_report["attacks"]["clean"]["accuracy"] == test["best"]["accuracy"]["clean"]
    assert (run / "eval" / "final" / "report.json").exists()
    md = (run / "summary.md").read_text()
    assert md.startswith(head) and md.endswith(tail) and "Not evaluated yet" not in md
    assert md.count("## Test set") == 1
    row = (f"| Clean | {100 * test['best']['accuracy']['clean']:.2f} | "
           f"{100 * test['final']['accuracy']['clean']:.2f} | "
           f"{100 * test['diff']['clean']:+.2f} |")
    assert row in md
    assert (tmp_path / "zoo" / "model.pt").exists()
    out = capsys.readouterr().out
    assert "## Test set (adr_scale.evaluate)" in out and "exported the student model" in out
    assert ev.main(args) == 0  # a second evaluation replaces the section, never duplicates it
    assert (run / "summary.md").read_text().count("## Test set") == 1


def test_section_is_appended_when_summary_md_has_none():
    assert ev.replace_test_section("", "## Test set (x)\n\nA") == "## Test set (x)\n\nA\n"
    assert ev.replace_test_section("# T\n", "## Test set (x)\n\nA") == "# T\n\n## Test set (x)\n\nA\n"
    old = "# T\n\n## Test set (x)\n\nold\n"
    assert ev.replace_test_section(old, "## Test set (x)\n\nnew") == "# T\n\n## Test set (x)\n\nnew\n"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_is_one_line_and_the_shell_exit_code(run_dir, capsys, monkeypatch,
                                                          signum, code):
    """Ctrl-C or SIGTERM while evaluating: one line that says how to resume, exit 128 + signal,
    and the handlers the process had before are back afterwards."""
    def stopped(args):
        signal.raise_signal(signum)  # delivered to this process, as by a terminal or a scheduler
        raise AssertionError("the handler should have raised")

    monkeypatch.setattr(ev_cli, "run_cli", stopped)
    before = signal.getsignal(signal.SIGTERM)
    assert ev.main(["--checkpoint", str(run_dir / "final.pt"), "--device", "cpu"]) == code
    err = capsys.readouterr().err
    assert err == (f"interrupted ({signal.Signals(signum).name}); rerun the same command to resume "
                   "AutoAttack from its state file\n")
    assert signal.getsignal(signal.SIGTERM) is before
