"""Successive halving's arithmetic: the epochs at which a rung is ranked and what a search costs.
No Ray: the scheduler, a trial's stops and the cost benchmark share it."""

from __future__ import annotations


def rung_milestones(max_t: int, grace_period: int, reduction_factor: int) -> list[int]:
    """Epochs at which successive halving ranks a rung: grace * rf**k below the budget."""
    milestones, m = [], grace_period
    while m < max_t:
        milestones.append(m)
        m *= reduction_factor
    return milestones


def halving_cost(n: int, max_t: int, grace_period: int, reduction_factor: int,
                 references: int = 0) -> int:
    """Epochs a search of n trials consumes under successive halving: its `references` (never
    stopped) train max_t each, the bracket of the other n - references keeps floor(kept / rf),
    at least one, at each rung."""
    references = min(references, n)
    cost, kept, done = references * max_t, n - references, 0
    if not kept:
        return cost
    for m in rung_milestones(max_t, grace_period, reduction_factor) + [max_t]:
        cost += kept * (m - done)
        kept, done = max(1, kept // reduction_factor), m
    return cost
