"""Schedules over optimizer steps: ADR's cosine annealing (Sec. 4.2) and the learning rate."""

from __future__ import annotations

import math
from collections.abc import Sequence

from adr_scale.config.schema import Segment


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


def adr_values(tau_start: float, tau_end: float, lambda_start: float, lambda_end: float,
               segments: Sequence[Segment], step: int, total_steps: int) -> tuple[float, float]:
    """(tau, lambda) at `step`: the cosine of Sec. 4.2, or of the segment in force (PBT replay:
    from each segment's fraction of training on, its ranges over the whole run)."""
    if segments:
        progress = step / total_steps if total_steps > 0 else 1.0
        for start, t0, t1, l0, l1 in segments:
            if progress >= start:
                tau_start, tau_end, lambda_start, lambda_end = t0, t1, l0, l1
    return (cosine_anneal(tau_start, tau_end, step, total_steps),
            cosine_anneal(lambda_start, lambda_end, step, total_steps))


def adr_schedule(adr, step: int, total_steps: int) -> tuple[float, float]:
    """adr_values for an ADRConfig."""
    return adr_values(adr.tau_start, adr.tau_end, adr.lambda_start, adr.lambda_end, adr.segments,
                      step, total_steps)
