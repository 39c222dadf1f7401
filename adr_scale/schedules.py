"""Schedules over optimizer steps: ADR's cosine annealing (Sec. 4.2) and the learning rate."""

from __future__ import annotations

import math


def cosine_anneal(start: float, end: float, step: int, total_steps: int) -> float:
    """v(i) = end + (start - end) * (1 + cos(pi * i / N)) / 2, Sec. 4.2: `start` at step 0, `end` at N.

    With start > end the value falls (the temperature tau); with start < end it rises (lambda).
    """
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0


def piecewise_lr(base_lr: float, step: int, total_steps: int,
                 milestones: tuple[float, ...] = (0.5, 0.75), factor: float = 0.1) -> float:
    """Sec. 5.1: base_lr, divided by 10 at 50 % and at 75 % of training."""
    drops = sum(step >= round(m * total_steps) for m in milestones)
    return base_lr * factor**drops


def cyclic_lr(max_lr: float, step: int, total_steps: int, warmup_steps: int) -> float:
    """Sec. 5.4 (after Gowal et al.): linear warm-up from 0 to max_lr, then cosine down to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    rest = max(total_steps - warmup_steps, 1)
    return cosine_anneal(max_lr, 0.0, step - warmup_steps, rest)


def learning_rate(schedule: str, base_lr: float, step: int, total_steps: int,
                  warmup_steps: int = 0) -> float:
    if schedule == "piecewise":
        return piecewise_lr(base_lr, step, total_steps)
    if schedule == "cyclic":
        return cyclic_lr(base_lr, step, total_steps, warmup_steps)
    raise ValueError(f"optim.schedule: unknown schedule {schedule!r}; allowed: cyclic, piecewise")
