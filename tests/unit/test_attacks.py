import torch
import torch.nn.functional as F
from torch import nn

from adr_scale.attacks import pgd_linf, soft_cross_entropy
from adr_scale.losses import trades_kl, trades_loss

EPS, ALPHA = 8 / 255, 2 / 255


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 5)).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 8, 8, generator=g)
    x[:4] = 0.0  # images at the box corners exercise the [0, 1] clamp
    x[4:8] = 1.0
    return x, torch.randint(0, 5, (16,), generator=g)


def test_pgd_stays_in_ball_and_box_and_raises_loss():
    model, (x, y) = _model(), _batch()
    x_adv = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=10)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 1e-3
    assert not x_adv.requires_grad


def test_pgd_takes_input_gradients_only():
    model, (x, y) = _model(), _batch()
    pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=3)
    assert all(p.grad is None for p in model.parameters())


def test_soft_targets_equal_hard_targets_for_one_hot():
    model, (x, y) = _model(), _batch()
    torch.manual_seed(5)
    hard = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=5)
    torch.manual_seed(5)
    soft = pgd_linf(model, x, F.one_hot(y, 5).float(), eps=EPS, alpha=ALPHA, steps=5)
    assert torch.allclose(hard, soft)


def test_soft_target_attack_raises_soft_loss():
    model, (x, y) = _model(), _batch()
    target = 0.6 * F.one_hot(y, 5).float() + 0.4 / 5
    x_adv = pgd_linf(model, x, target, eps=EPS, alpha=ALPHA, steps=10)
    with torch.no_grad():
        assert soft_cross_entropy(model(x_adv), target) > soft_cross_entropy(model(x), target)


def test_no_random_start_is_deterministic_and_zero_steps_is_identity():
    model, (x, y) = _model(), _batch()
    a = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=4, random_start=False)
    b = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=4, random_start=False)
    assert torch.equal(a, b)
    assert torch.equal(pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=0, random_start=False), x)


def test_trades_loss_is_nonnegative_and_kl_zero_on_identical_inputs():
    g = torch.Generator().manual_seed(0)
    nat, adv = torch.randn(64, 10, generator=g), torch.randn(64, 10, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    assert trades_kl(nat, nat).abs() < 1e-6
    assert trades_kl(nat, adv) > 0
    for target in (y, F.softmax(torch.randn(64, 10, generator=g), 1)):
        assert trades_loss(nat, adv, target, beta=6.0) >= 0
    expected = F.cross_entropy(nat, y) + 6.0 * F.kl_div(
        F.log_softmax(adv, 1), F.softmax(nat, 1), reduction="batchmean")
    assert torch.allclose(trades_loss(nat, adv, y, beta=6.0), expected, atol=1e-5)
