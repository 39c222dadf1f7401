"""Training objectives: PGD-AT's cross-entropy and TRADES (Zhang et al. 2019), hard or soft labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adr_scale.attacks import soft_cross_entropy


def trades_kl(logits_nat: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x_adv)) summed over classes and averaged over the batch (TRADES' robust term)."""
    log_p_nat = F.log_softmax(logits_nat.float(), dim=1)  # (B, C)
    log_p_adv = F.log_softmax(logits_adv.float(), dim=1)  # (B, C)
    return F.kl_div(log_p_adv, log_p_nat, reduction="batchmean", log_target=True)


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, target: torch.Tensor,
                beta: float) -> torch.Tensor:
    """CE(f(x), target) + beta * KL(f(x) || f(x_adv)); with ADR the rectified label is `target`
    (it enters the natural term only, as in the paper's TRADES + ADR)."""
    return soft_cross_entropy(logits_nat, target) + beta * trades_kl(logits_nat, logits_adv)
