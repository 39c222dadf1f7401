"""The statistics a search's confirmation stage reports: mean +- std over seeds, a paired test
over seeds, and the rank correlation between search-budget and full-length scores. Pure
functions on lists of floats (scipy for the t and rank distributions)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean, stdev


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (n - 1); nan for one value
    n: int

    def __str__(self) -> str:
        if self.n == 0:  # never "nan": a candidate without a finished run was not run
            return "not run"
        return f"{100 * self.mean:.2f} +- {100 * self.std:.2f}" if self.n > 1 else f"{100 * self.mean:.2f}"


def summary(values: list[float]) -> Summary:
    values = [float(v) for v in values]
    if not values:
        return Summary(math.nan, math.nan, 0)
    return Summary(mean(values), stdev(values) if len(values) > 1 else math.nan, len(values))


@dataclass(frozen=True)
class Paired:
    diff: float  # mean of a_i - b_i over the pairs
    std: float  # sample std of the differences
    t: float
    p: float  # two-sided p value of the paired t test (nan with fewer than 2 pairs)
    n: int


def paired_test(a: list[float], b: list[float]) -> Paired:
    """Paired t test of a - b (pairs: the same seed). With zero spread, t is +-inf and p 0 (or
    nan when every difference is 0)."""
    if len(a) != len(b):
        raise ValueError(f"paired_test: {len(a)} and {len(b)} values; allowed: pairs")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    if n < 2:
        return Paired(d[0] if d else math.nan, math.nan, math.nan, math.nan, n)
    m, s = mean(d), stdev(d)
    if s == 0:
        return Paired(m, 0.0, math.copysign(math.inf, m) if m else math.nan,
                      0.0 if m else math.nan, n)
    from scipy.stats import t as student_t

    t = m / (s / math.sqrt(n))
    return Paired(m, s, t, float(2 * student_t.sf(abs(t), n - 1)), n)


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan for < 3 points or a constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} and {len(y)} values; allowed: pairs")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = mean(rx), mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # the mean rank of a tie
        i = j + 1
    return ranks
