"""Presets against the official ADR configs (yuyuwu5/ADR@515da0e) and the paper's text; the
generated docs/presets.md; fidelity of ADR's label, its schedules and the official TRADES step
re-derived from the official code's published definitions (written here, not imported)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adr_scale.adr import rectify_labels
from adr_scale.config import (
    PRESETS,
    SOURCES,
    ConfigError,
    apply_overrides,
    get_preset,
    paper_overrides,
    paper_text,
    preset_doc,
    to_dict,
)
from adr_scale.data import load_splits
from adr_scale.engine import adversarial_batch_loss, build_state, train_step
from adr_scale.presets_doc import DOC, render
from adr_scale.schedules import adr_values
from adr_scale.train import batchnorm_note

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = [n for n in PRESETS if "ddpm" not in n and not n.startswith(("smoke", "digits", "svhn"))
        and not n.endswith("_standard")]


def _adr(cfg):
    a = cfg.adr
    return a.tau_start, a.tau_end, a.lambda_start, a.lambda_end


# ---------------------------------------------------------------------------------------------
# The presets and their paper-text variants


def test_preset_count_and_docs_table_is_the_generated_one():
    assert len(PRESETS) == 118 and len(GRID) == 96
    assert DOC.read_text() == render(), "docs/presets.md is stale: python -m adr_scale.presets_doc"


def test_paper_text_is_the_preset_plus_its_overrides_and_docstrings_name_them():
    for name in PRESETS:
        flags = paper_overrides(name)
        assert to_dict(apply_overrides(get_preset(name), flags)) == to_dict(paper_text(name)), name
        doc = preset_doc(name)
        assert SOURCES[name] in doc, name
        for flag in flags:  # every departure is written next to the preset
            assert flag.split("=")[0] in doc, (name, flag)
    with pytest.raises(ConfigError, match="unknown preset"):
        paper_text("cifar10_nothing")


@pytest.mark.parametrize("name", [
    "cifar10_resnet18_at_awp_adr", "cifar10_resnet18_at_wa_awp_adr", "cifar10_wrn34_10_at_awp_adr",
    "cifar10_resnet18_trades_awp_adr", "cifar10_resnet18_trades_wa_awp_adr"])
def test_cifar10_awp_schedules_are_the_official_ones(name):
    assert _adr(get_preset(name)) == (2.5, 1.5, 0.7, 0.85)
    assert _adr(paper_text(name)) == (2.5, 2.0, 0.7, 0.95)


def test_cifar100_and_tinyimagenet_awp_settings_are_the_official_ones():
    for name in ("cifar100_resnet18_at_awp_adr", "cifar100_wrn34_10_at_wa_awp_adr"):
        assert _adr(get_preset(name)) == (2.0, 1.0, 0.7, 0.85)
        assert _adr(paper_text(name)) == (1.5, 1.0, 0.7, 0.95)
    # TRADES on CIFAR-100 binds the paper's values in its gin file.
    assert _adr(get_preset("cifar100_resnet18_trades_awp_adr")) == (1.5, 1.0, 0.7, 0.95)
    tin = get_preset("tinyimagenet200_resnet18_at_wa_awp_adr")
    assert _adr(tin) == (2.0, 1.5, 0.3, 0.9) and tin.awp.gamma == 0.001
    assert _adr(paper_text("tinyimagenet200_resnet18_at_wa_awp_adr")) == (2.0, 1.5, 0.5, 0.9)
    assert paper_text("tinyimagenet200_resnet18_at_awp").awp.gamma == 0.005
    for name in GRID:  # every TinyImageNet AWP file binds rho = 0.001; the paper says 0.005
        if name.startswith("tinyimagenet200") and "_awp" in name and "config/" in SOURCES[name]:
            assert get_preset(name).awp.gamma == 0.001, name
        elif "_awp" in name:
            assert get_preset(name).awp.gamma == 0.005, name
    # Plain-SGD settings: the official files bind the paper's values.
    for name in ("cifar10_resnet18_at_adr", "cifar100_resnet18_at_wa_adr",
                 "tinyimagenet200_resnet18_at_adr"):
        assert paper_overrides(name) == [], name
    assert paper_overrides("cifar100_wrn34_10_at_adr") == ["model.arch=wrn34_10"]


def test_code_level_official_settings_on_the_grid():
    for name in GRID:
        cfg, paper = get_preset(name), paper_text(name)
        assert cfg.optim.nesterov == (not cfg.awp.enabled), name  # AWP base optimizer: no Nesterov
        assert paper.optim.nesterov, name  # Sec. 5.1: Nesterov
        if cfg.train.method == "trades":
            assert (cfg.train.trades_attack, paper.train.trades_attack) == ("official", "zhang")
        if "wrn34_10" in name:
            assert (cfg.model.arch, paper.model.arch) == ("wrn34_10_dm", "wrn34_10"), name
        else:
            assert cfg.model.arch == "resnet18", name
        assert cfg.model.bn_momentum == 0.1 and not cfg.optim.no_decay_norm_bias  # no DDPM data
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.adr.ema_decay) == (0.1, 5e-4, 0.995)


def test_ddpm_presets():
    official = get_preset("cifar100_preact_resnet18_ddpm_at_awp_adr")
    assert _adr(official) == (3.0, 1.5, 0.5, 0.8)
    assert official.awp.enabled and official.awp.gamma == 0.005 and not official.optim.nesterov
    assert _adr(get_preset("cifar10_preact_resnet18_ddpm_at_awp_adr")) == (2.5, 1.5, 0.7, 0.85)
    assert _adr(paper_text("cifar100_preact_resnet18_ddpm_at_awp_adr")) == (1.5, 1.0, 0.7, 0.95)
    for name in [n for n in PRESETS if "ddpm" in n]:
        cfg, paper = get_preset(name), paper_text(name)
        assert cfg.model.arch.endswith("_dm") and cfg.model.activation == "silu", name
        assert (cfg.model.bn_momentum, cfg.model.bn_momentum_step0) == (0.01, 1.0), name
        assert cfg.optim.no_decay_norm_bias, name
        assert (paper.model.bn_momentum, paper.model.bn_momentum_step0) == (0.1, None)
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.synthetic_fraction) == (
            400, 1024, 0.75)
        assert (cfg.optim.schedule, cfg.optim.lr, cfg.optim.warmup_epochs) == ("cyclic", 0.4, 10)
        assert cfg.train.wa and cfg.adr.enabled
        assert cfg.awp.enabled == ("_awp_" in name), name  # the AWP-free ones say so by name
    assert get_preset("cifar100_preact_resnet18_ddpm_at_adr").optim.nesterov
    assert _adr(get_preset("cifar100_preact_resnet18_ddpm_at_adr")) == (1.5, 1.0, 0.7, 0.95)
    assert get_preset("cifar100_wrn34_10_ddpm_at_adr").model.arch == "wrn34_10_dm"


def test_new_fields_are_validated_with_one_line_errors():
    cfg = get_preset("smoke")
    for flag, allowed in (("train.trades_attack=madry", "official, zhang"),
                          ("model.bn_momentum=0", "(0, 1]"), ("model.bn_momentum_step0=2", "(0, 1]")):
        with pytest.raises(ConfigError) as err:
            apply_overrides(cfg, [flag])
        assert flag.split("=")[0] in str(err.value) and allowed in str(err.value)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Fidelity: the official code's formulas, re-derived here


def _official_rectified_label(logits, label, tau, lam):
    """yuyuwu5/ADR src/adr.py: softmax(logits / tau); the per-image interpolation is lam minus
    (max probability - true-class probability), clipped to [0, 1]; mix with the one-hot label."""
    p = F.softmax(logits / tau, dim=1)
    target_prob = p.gather(1, label[:, None]).squeeze(1)
    per_img = (lam - (p.max(dim=1).values - target_prob)).clamp(0.0, 1.0)[:, None]
    return per_img * p + (1 - per_img) * F.one_hot(label, logits.shape[1])


def test_rectified_label_equals_the_official_formula_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(200):
        classes = int(torch.randint(2, 201, (1,), generator=g))
        logits = 4 * torch.randn(8, classes, generator=g)
        label = torch.randint(0, classes, (8,), generator=g)
        tau = 0.5 + 4.5 * float(torch.rand(1, generator=g))
        lam = float(torch.rand(1, generator=g))
        diff = rectify_labels(logits, label, tau, lam) - _official_rectified_label(
            logits, label, tau, lam)
        worst = max(worst, diff.abs().max().item())
    assert worst < 1e-6


def _official_cosine(base, final, epochs, iters_per_epoch):
    """The official ADR code's cosine_scheduler (github.com/yuyuwu5/ADR) without warm-up: one
    value per iteration, final + (base - final) (1 + cos(pi i / N)) / 2 for i = 0 .. N - 1."""
    i = np.arange(epochs * iters_per_epoch)
    return final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / len(i)))


def test_tau_and_lambda_follow_the_official_cosine_scheduler():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(20):
        epochs, per_epoch = int(rng.integers(1, 30)), int(rng.integers(1, 60))
        t_hi, t_lo = 1 + 2 * rng.random(), rng.random()
        l_lo, l_hi = 0.5 * rng.random(), 0.5 + 0.5 * rng.random()
        n = epochs * per_epoch
        tau_ref = _official_cosine(t_hi, t_lo, epochs, per_epoch)  # temperature_high -> low
        lam_ref = _official_cosine(l_lo, l_hi, epochs, per_epoch)  # interpolation_low -> high
        ours = np.array([adr_values(t_hi, t_lo, l_lo, l_hi, (), i, n) for i in range(n)])
        worst = max(worst, np.abs(ours[:, 0] - tau_ref).max(), np.abs(ours[:, 1] - lam_ref).max())
    assert worst < 1e-12


@pytest.fixture(scope="module")
def digits():
    splits = load_splits(get_preset("smoke").data)
    # The first build_state of a process pays ~1 s of one-time torch set-up; pay it here.
    build_state(get_preset("smoke"), splits.info, len(splits.train), torch.device("cpu"))
    return splits


def _official_trades_loss(model, x, y, eps, alpha, steps, beta):
    """yuyuwu5/ADR util/trades_attack.py + advTrainer.py, model in train mode throughout:
    x_adv = x + 0.001 U[0, 1); p = log_softmax(model(x)) without grad; `steps` signed-gradient
    ascents on KL(p || model(x_adv)) (batchmean), projected to the eps ball and [0, 1]; then one
    forward of cat(x, x_adv) and CE(nat, y) + beta KL(nat || adv)."""
    model.train()
    x_adv = x + 0.001 * torch.rand_like(x)
    with torch.no_grad():
        p_nat = F.log_softmax(model(x), dim=1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_nat, reduction="batchmean",
                      log_target=True)
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    logits = model(torch.cat([x, x_adv]))
    nat, adv = logits[: len(x)], logits[len(x):]
    return F.cross_entropy(nat, y) + beta * F.kl_div(
        F.log_softmax(adv, dim=1), F.log_softmax(nat, dim=1), reduction="batchmean",
        log_target=True)


def _trades_state(digits, attack):
    cfg = apply_overrides(get_preset("smoke"), [
        "train.device=cpu", "train.method=trades", "adr.enabled=false",
        f"train.trades_attack={attack}"])
    return build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))


def test_official_trades_step_equals_the_official_code(digits):
    state = _trades_state(digits, "official")
    reference = copy.deepcopy(state.model)
    g = torch.Generator().manual_seed(1)
    x = 0.01 + 0.98 * torch.rand(32, 1, 8, 8, generator=g)  # inside (0, 1): no start clipping
    y = torch.randint(0, 10, (32,), generator=g)
    a, cfg = state.cfg.attack, state.cfg
    torch.manual_seed(3)
    state.model.train()
    ours = adversarial_batch_loss(state, x, y)(state.model)
    torch.manual_seed(3)
    want = _official_trades_loss(reference, x, y, a.eps, a.alpha, a.steps, cfg.train.trades_beta)
    assert ours.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)
    # The attack ran in train mode: running statistics moved, in both, identically.
    bn, bn_ref = state.model.net.features[1], reference.net.features[1]
    assert torch.allclose(bn.running_mean, bn_ref.running_mean, atol=1e-7)
    assert bn.num_batches_tracked.item() == 1 + a.steps + 1  # p(x), the steps, the loss


def test_zhang_trades_attacks_in_eval_mode(digits):
    state = _trades_state(digits, "zhang")
    bn = state.model.net.features[1]
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    state.model.train()
    loss_fn = adversarial_batch_loss(state, x, y)
    assert bn.num_batches_tracked.item() == 0  # p(x) and the attack: eval mode
    loss_fn(state.model)
    assert bn.num_batches_tracked.item() == 2  # separate clean and adversarial forwards


# ---------------------------------------------------------------------------------------------
# BatchNorm momentum, weight decay, and the multi-worker BatchNorm note


def test_bn_momentum_is_one_for_the_first_step_then_the_configured_value(digits):
    cfg = apply_overrides(get_preset("smoke"), [
        "train.device=cpu", "model.bn_momentum=0.01", "model.bn_momentum_step0=1.0"])
    state = build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))
    bn = state.model.net.features[1]
    assert bn.momentum == 0.01
    seen: list[tuple[int, float, torch.Tensor]] = []
    bn.register_forward_pre_hook(
        lambda m, inp: seen.append((state.step, m.momentum, inp[0].detach().clone()))
        if m.training else None)
    images, labels = digits.train.images[:64], digits.train.labels[:64]
    train_step(state, images, labels)
    # After step 0 at momentum 1.0 the running mean is the last train-mode batch's mean.
    assert torch.allclose(bn.running_mean, seen[-1][2].mean(dim=(0, 2, 3)), atol=1e-6)
    train_step(state, images, labels)
    momenta = {step: {m for s, m, _ in seen if s == step} for step in (0, 1)}
    assert momenta == {0: {1.0}, 1: {0.01}}


def test_no_decay_norm_bias_exempts_exactly_the_batchnorm_parameters(digits):
    cfg = apply_overrides(get_preset("smoke"), ["train.device=cpu", "optim.no_decay_norm_bias=true"])
    state = build_state(cfg, digits.info, len(digits.train), torch.device("cpu"))
    decay, exempt = state.optimizer.param_groups
    named = {id(p): n for n, p in state.model.named_parameters()}
    assert exempt["weight_decay"] == 0.0 and decay["weight_decay"] == 5e-4
    assert sorted(named[id(p)] for p in exempt["params"]) == [
        "net.features.1.bias", "net.features.1.weight", "net.features.4.bias",
        "net.features.4.weight"]
    assert "net.fc.bias" in {named[id(p)] for p in decay["params"]}  # as in the official code
    plain = build_state(get_preset("smoke"), digits.info, len(digits.train), torch.device("cpu"))
    assert len(plain.optimizer.param_groups) == 1


def test_driver_notes_small_per_rank_batchnorm_batches_once():
    cfg = get_preset("cifar10_resnet18_at_adr")  # batch 128
    note = batchnorm_note(cfg, workers=8, gpus=1)
    assert "16 images per rank" in note and "train.sync_batchnorm=true" in note
    assert "\n" not in note
    assert batchnorm_note(cfg, workers=2, gpus=1) is None  # 64 per rank
    assert batchnorm_note(cfg, workers=8, gpus=0) is None  # CPU runs (tests, smoke)
    assert batchnorm_note(apply_overrides(cfg, ["train.sync_batchnorm=true"]), 8, 1) is None
    assert batchnorm_note(apply_overrides(cfg, ["model.arch=tiny_nonorm"]), 8, 1) is None
    ddpm = get_preset("cifar100_preact_resnet18_ddpm_at_awp_adr")  # batch 1024
    assert batchnorm_note(ddpm, workers=16, gpus=1) is None  # 64 per rank
    assert "32 images per rank" in batchnorm_note(ddpm, workers=32, gpus=1)


def test_paper_text_variant_is_one_flag_away(capsys, tmp_path):
    from adr_scale.config import dump_yaml, paper_text
    from adr_scale.train import main

    name = "cifar10_resnet18_at_awp_adr"  # official tau 2.5 -> 1.5, lambda 0.7 -> 0.85, no Nesterov
    assert main(["--preset", name, "--paper-text", "--print-config"]) == 0
    assert capsys.readouterr().out.strip() == dump_yaml(paper_text(name)).strip()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(dump_yaml(paper_text(name)))
    assert main(["--config", str(cfg), "--paper-text", "--print-config"]) == 2
    assert "--paper-text: applies to --preset only" in capsys.readouterr().err


def test_show_preset_prints_a_generated_presets_recipe(capsys):
    from adr_scale.config import RECIPES
    from adr_scale.train import main

    assert main(["--show-preset", "cifar100_wrn34_10_at_wa_awp_adr"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cifar100_wrn34_10_at_wa_awp_adr: AT + WA + AWP + ADR on cifar100")
    assert "Generated by adr_scale.config.official._register_paper_grid" in out
    assert ("cfg = adr_scale.config.official.paper_variant(dataset='cifar100', arch='wrn34_10', "
            "method='at', wa=True, awp=True, adr=True)") in out
    for edit in ("cfg.adr.tau_start = 2.0", "cfg.adr.lambda_end = 0.85",
                 "cfg.model.arch = 'wrn34_10_dm'", "cfg.optim.nesterov = False"):
        assert f"\n  {edit}\n" in out, edit
    assert "Official gin file: yuyuwu5/ADR@515da0e config/cifar100/wrn_pgd_awp_adr.gin" in out
    # every generated preset's recipe builds exactly its config
    assert len(RECIPES) == 96 + 6 + 8  # paper grid, _standard pseudo-labellers, SVHN grid
    for name, recipe in RECIPES.items():
        assert to_dict(recipe.build()) == to_dict(PRESETS[name]()), name


def test_show_preset_prints_a_hand_written_presets_source(capsys):
    from adr_scale.train import main

    assert main(["--show-preset", "smoke_standard"]) == 0
    out = capsys.readouterr().out
    assert "Hand-written, adr_scale.config.presets.smoke_standard:" in out
    assert "def smoke_standard() -> RunConfig:" in out and 'cfg.train.method = "standard"' in out
    assert "Source: the project's own" in out


def test_show_preset_of_an_unknown_name_is_one_line_and_exit_2(capsys):
    from adr_scale.train import main

    assert main(["--show-preset", "cifar10_resnet18_nothing"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("error: --show-preset: unknown preset "
                                   "'cifar10_resnet18_nothing'; see --list-presets")


def test_every_preset_name_is_written_in_the_docs():
    """A generated name (made by loops, so no `def` holds it) is still found by a text search."""
    from adr_scale.config import RECIPES

    text = DOC.read_text()
    assert "--show-preset NAME" in text
    for name in PRESETS:
        assert f"`{name}`" in text, name
    assert set(RECIPES) <= set(PRESETS)
