"""Annealing Self-Distillation Rectification: the rectified label (Eq. 3-5) and the EMA teacher."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def rectify_labels(teacher_logits: torch.Tensor, targets: torch.Tensor, tau: float,
                   lam: float) -> torch.Tensor:
    """Rectified soft label P(x) of the paper's Eq. 3-5.

    teacher_logits: (B, C) EMA-teacher logits on the clean batch; targets: (B,) class indices.
    Returns (B, C) probabilities whose largest entry is always the true class.
    """
    p_t = F.softmax(teacher_logits.float() / tau, dim=1)  # (B, C), Eq. 3
    p_pred = p_t.max(dim=1).values  # (B,) P_t(x)^(psi): the teacher's predicted class
    p_true = p_t.gather(1, targets[:, None]).squeeze(1)  # (B,) P_t(x)^(y)
    lam_i = (lam - (p_pred - p_true)).clamp(0.0, 1.0)[:, None]  # (B, 1), Eq. 4
    one_hot = F.one_hot(targets, p_t.shape[1]).to(p_t.dtype)  # (B, C)
    return lam_i * p_t + (1.0 - lam_i) * one_hot  # (B, C), Eq. 5


class EMATeacher(nn.Module):
    """theta_t <- gamma * theta_t + (1 - gamma) * theta_s after every optimizer step (Sec. 4.2).

    BatchNorm buffers: the running mean and variance are averaged with the same decay as the
    weights (as the official ADR code and timm's ModelEmaV2 do), not copied from the student. The
    teacher's weights are an average over recent students, so its normalisation statistics must be
    the matching average; pairing averaged weights with the latest student's statistics shifts
    the activations the averaged weights expect. Integer buffers (num_batches_tracked) are copied.
    The teacher is always in eval mode and never receives gradients.
    """

    def __init__(self, student: nn.Module, decay: float, warmup: bool = False) -> None:
        super().__init__()
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(_unwrap(student)).eval()
        self.module.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> EMATeacher:  # the teacher never leaves eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def decay_at(self, t: int) -> float:
        """The decay of update t (0-based). With warm-up (Wang et al. 2023), min(decay,
        (1 + t) / (10 + t)): the teacher follows the student closely early on, so a short run
        or a search trial does not spend its first ~1/(1 - decay) steps against a near-random
        teacher (0.1 at t = 0, 0.5 at t = 8, 0.9 at t = 80, 0.99 at t = 890)."""
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, student: nn.Module, t: int = 0) -> None:
        """One EMA step after optimizer step t (0-based; it matters only with warm-up)."""
        floats_t, floats_s, ints_t, ints_s = self._pairs(student)
        if floats_t:
            torch._foreach_lerp_(floats_t, floats_s, 1.0 - self.decay_at(t))  # fused, one per group
        if ints_t:  # num_batches_tracked; models without BatchNorm have none
            torch._foreach_copy_(ints_t, ints_s)

    def _pairs(self, student: nn.Module) -> tuple[list, list, list, list]:
        """Matching (teacher, student) tensors, cached: state_dict() on every step is slow and
        load_state_dict copies in place, so the references stay valid."""
        plain = _unwrap(student)
        if getattr(self, "_cached_for", None) is not plain:
            teacher = self.module.state_dict()
            floats_t, floats_s, ints_t, ints_s = [], [], [], []
            for name, value in plain.state_dict().items():
                is_float = teacher[name].dtype.is_floating_point
                (floats_t if is_float else ints_t).append(teacher[name])
                (floats_s if is_float else ints_s).append(value.detach())
            self._cache = (floats_t, floats_s, ints_t, ints_s)
            object.__setattr__(self, "_cached_for", plain)  # a reference, not a submodule
        return self._cache


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
