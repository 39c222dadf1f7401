import math

import pytest
import torch
from torch import nn

from adr_scale.adr import EMATeacher, rectify_labels


def _softmax(row, tau):
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def test_teacher_right_is_plain_interpolation():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    out = rectify_labels(logits, torch.tensor([0]), tau=2.0, lam=0.7)
    p = _softmax([2.0, 1.0, 0.0], 2.0)  # Eq. 3 by hand
    expected = [0.7 * p[0] + 0.3, 0.7 * p[1], 0.7 * p[2]]  # Eq. 5 with lambda_i = lambda
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_teacher_wrong_lowers_lambda_by_its_mistake():
    logits = torch.tensor([[0.0, 1.0, 0.0]])  # predicts class 1, truth is class 0
    p = _softmax([0.0, 1.0, 0.0], 1.0)
    lam_i = 0.9 - (p[1] - p[0])  # Eq. 4
    out = rectify_labels(logits, torch.tensor([0]), tau=1.0, lam=0.9)
    expected = [lam_i * p[0] + (1 - lam_i), lam_i * p[1], lam_i * p[2]]
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_confidently_wrong_teacher_is_clipped_to_one_hot():
    logits = torch.tensor([[0.0, 20.0, 0.0]])  # p(psi) - p(y) ~ 1 > lambda -> lambda_i clipped to 0
    out = rectify_labels(logits, torch.tensor([2]), tau=1.0, lam=0.5)
    assert out[0].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)


def test_lambda_one_and_right_teacher_gives_teacher_distribution():
    logits = torch.tensor([[3.0, 0.5, -1.0, 0.2]])
    out = rectify_labels(logits, torch.tensor([0]), tau=1.5, lam=1.0)
    assert out[0].tolist() == pytest.approx(_softmax([3.0, 0.5, -1.0, 0.2], 1.5), abs=1e-6)


def test_rows_sum_to_one_and_true_class_is_largest():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(512, 10, generator=g)
    targets = torch.randint(0, 10, (512,), generator=g)
    for tau, lam in [(2.5, 0.7), (1.0, 0.95), (0.5, 1.0), (3.0, 0.0)]:
        out = rectify_labels(logits, targets, tau, lam)
        assert out.shape == (512, 10)
        assert torch.allclose(out.sum(1), torch.ones(512), atol=1e-5)
        assert (out >= 0).all()
        true_p = out.gather(1, targets[:, None]).squeeze(1)
        others = out.scatter(1, targets[:, None], -1.0).max(1).values
        assert (true_p >= others - 1e-6).all()
    # with teachers that are wrong for most rows, the rectified labels still differ from one-hot
    assert not torch.allclose(rectify_labels(logits, targets, 2.0, 0.7),
                              torch.nn.functional.one_hot(targets, 10).float())


def test_temperature_flattens_the_teacher():
    logits = torch.tensor([[4.0, 0.0, 0.0]])
    y = torch.tensor([0])
    hot = rectify_labels(logits, y, tau=0.5, lam=1.0)[0, 1]
    warm = rectify_labels(logits, y, tau=4.0, lam=1.0)[0, 1]
    assert warm > hot


def test_ema_update_equation_covers_weights_and_bn_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = EMATeacher(student, decay=0.9)
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()
    student(torch.randn(8, 3))  # moves BN running statistics
    teacher.update(student)
    after = teacher.module.state_dict()
    for name, value in student.state_dict().items():
        if value.dtype.is_floating_point:
            assert torch.allclose(after[name], 0.9 * before[name] + 0.1 * value, atol=1e-6), name
        else:
            assert torch.equal(after[name], value), name
    assert not teacher.training
    teacher.train()
    assert not teacher.module.training  # the teacher stays in eval mode
    assert all(not p.requires_grad for p in teacher.parameters())


def test_ema_of_a_model_without_buffers():
    student = nn.Linear(3, 2)
    teacher = EMATeacher(student, decay=0.5)
    with torch.no_grad():
        student.weight.add_(2.0)
    teacher.update(student)
    assert torch.allclose(teacher.module.weight, student.weight - 1.0)


def test_ema_warmup_follows_wang_et_al():
    """decay_t = min(decay, (1 + t) / (10 + t)): update 0 moves the teacher 90 % of the way."""
    student = torch.nn.Linear(3, 2)
    teacher = EMATeacher(student, decay=0.995, warmup=True)
    assert [round(teacher.decay_at(t), 4) for t in (0, 8, 80, 10_000)] == [0.1, 0.5, 0.9, 0.995]
    assert EMATeacher(student, decay=0.995).decay_at(0) == 0.995  # off by default
    before = teacher.module.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student, 0)
    torch.testing.assert_close(teacher.module.weight, before + 0.9)
