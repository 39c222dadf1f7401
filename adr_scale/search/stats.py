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

    @property
    def p_less(self) -> float:
        """One-sided p value of "a < b" (nan with fewer than 2 pairs): half the two-sided p when
        the mean difference is negative, one minus that half otherwise."""
        if math.isnan(self.p):
            return math.nan if self.n < 2 else 1.0  # no spread to test against: no evidence
        return self.p / 2 if self.diff < 0 else 1 - self.p / 2

    @property
    def p_greater(self) -> float:
        """One-sided p value of "a > b" (nan with fewer than 2 pairs)."""
        if math.isnan(self.p):
            return math.nan if self.n < 2 else 1.0
        return self.p / 2 if self.diff > 0 else 1 - self.p / 2


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


def pooled_paired_tests(diffs: dict[str, list[float]]) -> dict[str, Paired]:
    """Paired t tests of several candidates against one leader, each candidate's differences
    (same seeds) in `diffs`, with the spread pooled over the candidates: sum of squared
    deviations from each candidate's mean difference over sum(n - 1) degrees of freedom. With two
    seeds a single pair's spread rests on one degree of freedom and is often exactly 0 (on a
    300-image validation set accuracies move in steps of 1/300), which made p 0 for a gap of a
    third of a point. A pooled spread of 0 gives no test (p nan)."""
    from scipy.stats import t as student_t

    df = sum(len(d) - 1 for d in diffs.values())
    ss = sum(sum((x - mean(d)) ** 2 for x in d) for d in diffs.values() if d)
    s = math.sqrt(ss / df) if df > 0 else math.nan
    out = {}
    for name, d in diffs.items():
        m, n = mean(d), len(d)
        if not s > 0:  # nan or 0: no estimate of the noise
            out[name] = Paired(m, s, math.nan, math.nan, n)
            continue
        t = m / (s / math.sqrt(n))
        out[name] = Paired(m, s, t, float(2 * student_t.sf(abs(t), df)), n)
    return out


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
