"""The engine in-process: AWP, a step's mechanics, resume == uninterrupted, golden losses."""

import itertools
import json
import os
from pathlib import Path

import pytest
import torch

from adr_scale.attacks import soft_cross_entropy
from adr_scale.awp import AdversarialWeightPerturbation, perturbed
from adr_scale.checkpoint import load_checkpoint
from adr_scale.config import apply_overrides, get_preset
from adr_scale.data import load_splits, train_batches
from adr_scale.drivers import fit
from adr_scale.engine import build_state, train_step
from adr_scale.models import create_model

pytestmark = pytest.mark.usefixtures("no_run_plots")  # tests/unit/conftest.py

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def digits():
    return load_splits(get_preset("smoke").data)


def _cfg(*overrides):
    return apply_overrides(get_preset("smoke"), ["train.device=cpu", *overrides])


def test_awp_perturbs_by_gamma_and_restores_exactly():
    torch.manual_seed(0)
    model = create_model("tiny", 10, in_channels=1)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    awp = AdversarialWeightPerturbation(model, gamma=0.005, proxy_lr=0.01)
    diff = awp.compute(model, lambda m: soft_cross_entropy(m(x), y))
    params = dict(model.named_parameters())
    assert set(diff) == {n for n, p in params.items() if p.dim() > 1}
    before = {n: p.detach().clone() for n, p in params.items()}
    with perturbed(model, diff):
        for name, d in diff.items():
            moved = params[name].detach() - before[name]
            assert torch.allclose(moved, d, atol=1e-7)
            assert moved.norm() / before[name].norm() == pytest.approx(0.005, rel=1e-3)
        with torch.no_grad():
            perturbed_loss = soft_cross_entropy(model(x), y)
    for name, p in params.items():
        assert torch.equal(p, before[name]), name
    with torch.no_grad():  # the proxy step climbs the loss: the perturbed weights are worse
        assert perturbed_loss > soft_cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["at", "trades", "standard"])
def test_train_step_updates_student_and_teacher(digits, method):
    overrides = [f"train.method={method}"] + (["adr.enabled=false"] if method == "standard" else [])
    cfg = _cfg(*overrides, "awp.enabled=" + ("false" if method == "standard" else "true"))
    state = build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))
    student0 = {k: v.clone() for k, v in state.model.state_dict().items()}
    teacher0 = {k: v.clone() for k, v in state.ema.module.state_dict().items()}
    images, labels = next(train_batches(digits.train, cfg.train.batch_size, 0, 0, state.device))
    loss = train_step(state, images, labels)
    assert torch.isfinite(loss) and loss > 0 and state.step == 1
    w = "net.features.0.weight"
    moved = state.model.state_dict()[w] - student0[w]
    assert moved.abs().max() > 0
    # theta_t = 0.99 theta_t + 0.01 theta_s, with theta_t = theta_s at initialisation
    expected = 0.99 * teacher0[w] + 0.01 * state.model.state_dict()[w]
    assert torch.allclose(state.ema.module.state_dict()[w], expected, atol=1e-7)


def _rows_without_time(run):
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # wall-clock fields
        row.pop("seconds"), row.pop("samples_per_s")
    return rows


def test_resume_equals_uninterrupted(tmp_path, digits):
    # PGD-2 in training and validation: resuming must be exact whatever the attack's length
    cfg = _cfg("train.epochs=3", "awp.enabled=true", "train.wa=true", "attack.steps=2",
               "attack.eval_steps=2")
    full = fit(cfg, tmp_path / "full", progress=False, splits=digits)
    assert fit(cfg, tmp_path / "cut", until_epoch=1, progress=False, splits=digits) == {}
    assert not (tmp_path / "cut" / "final.pt").exists()
    assert len(_rows_without_time(tmp_path / "cut")) == 1
    resumed = fit(cfg, tmp_path / "cut", progress=False, splits=digits)
    assert _rows_without_time(tmp_path / "full") == _rows_without_time(tmp_path / "cut")
    assert [r["epoch"] for r in _rows_without_time(tmp_path / "cut")] == [1, 2, 3]
    a = load_checkpoint(tmp_path / "full" / "final.pt")
    b = load_checkpoint(tmp_path / "cut" / "final.pt")
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    full.pop("train_seconds"), resumed.pop("train_seconds")
    assert full == resumed
    assert a["step"] == 3 * 18 and a["config"]["train"]["wa"] is True
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == [
        "epoch-0002.pt", "epoch-0003.pt"]
    best = load_checkpoint(tmp_path / "full" / "best.pt")
    assert best["epoch"] == full["best_epoch"]


def test_rerun_of_a_finished_run_changes_nothing(tmp_path, digits):
    cfg = _cfg("train.max_steps=20")  # 20 steps = one full epoch of 18 and two steps of another
    first = fit(cfg, tmp_path / "r", progress=False, splits=digits)
    assert first["steps"] == 20 and first["final_epoch"] == 2
    rows = _rows_without_time(tmp_path / "r")
    second = fit(cfg, tmp_path / "r", progress=False, splits=digits)
    assert _rows_without_time(tmp_path / "r") == rows
    first.pop("train_seconds"), second.pop("train_seconds")
    assert first == second


def test_other_config_in_the_same_run_dir_is_refused(tmp_path, digits):
    fit(_cfg("train.max_steps=2"), tmp_path / "r", progress=False, splits=digits)
    with pytest.raises(ValueError, match=r"--out: .* another config \(differs in adr.tau_start\)"):
        fit(_cfg("train.max_steps=2", "adr.tau_start=3"), tmp_path / "r", progress=False,
            splits=digits)


GOLDEN = ASSETS / "golden_smoke_losses.json"
GOLDEN_SETTINGS = {  # name -> overrides of the smoke preset; 12 steps each
    "at_adr": [],
    "trades_adr_awp": ["train.method=trades", "awp.enabled=true"],
    "at": ["adr.enabled=false"],
}


def golden_losses(digits):
    out = {}
    for name, overrides in GOLDEN_SETTINGS.items():
        cfg = _cfg(*overrides)
        state = build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))
        torch.manual_seed(cfg.seed)
        batches = train_batches(digits.train, cfg.train.batch_size, cfg.seed, 0, state.device)
        out[name] = [train_step(state, x, y).item() for x, y in itertools.islice(batches, 12)]
    return out


def test_golden_per_step_losses(digits):
    """A change that is not meant to change the maths must reproduce these losses.

    Regenerate deliberately with ADR_SCALE_REGEN_GOLDEN=1 and say why in the commit.
    """
    losses = golden_losses(digits)
    if os.environ.get("ADR_SCALE_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(losses, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) == set(losses)
    for name in golden:
        assert len(losses[name]) == 12
        assert losses[name] == pytest.approx(golden[name], rel=2e-4, abs=2e-5), name


def test_validation_does_not_change_the_training_trajectory(tmp_path, digits):
    """The validation attack draws from its own RNG stream: a run with another val attack trains
    the same weights (here 2 vs 10 PGD steps; PGD-2 in training)."""
    a = fit(_cfg("train.epochs=2", "attack.steps=2", "attack.eval_steps=2"), tmp_path / "a",
            progress=False, splits=digits)
    b = fit(_cfg("train.epochs=2", "attack.steps=2", "attack.eval_steps=10"), tmp_path / "b",
            progress=False, splits=digits)
    assert a["steps"] == b["steps"] == 36
    wa = load_checkpoint(tmp_path / "a" / "final.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "final.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
