"""The confirmation stage's statistics against hand computations and scipy."""

import math

import pytest
from scipy import stats as sp

from adr_scale.search.stats import paired_test, spearman, summary


def test_summary_is_mean_and_sample_std():
    s = summary([0.80, 0.82, 0.87])
    assert s.mean == pytest.approx(0.83)
    assert s.std == pytest.approx(math.sqrt(((0.03) ** 2 + 0.01 ** 2 + 0.04 ** 2) / 2))
    assert str(s) == "83.00 +- 3.61" and math.isnan(summary([0.5]).std)


def test_paired_test_matches_scipy_and_hand_values():
    a, b = [0.81, 0.84, 0.79, 0.86], [0.78, 0.80, 0.79, 0.82]
    got = paired_test(a, b)
    d = [0.03, 0.04, 0.0, 0.04]
    assert got.diff == pytest.approx(sum(d) / 4) and got.n == 4
    ref = sp.ttest_rel(a, b)
    assert got.t == pytest.approx(ref.statistic) and got.p == pytest.approx(ref.pvalue)
    same = paired_test([0.5, 0.6], [0.4, 0.5])  # every difference 0.1: no spread
    assert same.std == 0 and math.isinf(same.t) and same.p == 0
    with pytest.raises(ValueError, match="pairs"):
        paired_test([1.0], [1.0, 2.0])


def test_spearman_matches_scipy_with_ties():
    x, y = [0.1, 0.4, 0.4, 0.9, 0.3], [1.0, 3.0, 2.0, 5.0, 2.0]
    assert spearman(x, y) == pytest.approx(sp.spearmanr(x, y).statistic)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [1, 2])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_pooled_paired_tests_do_not_call_an_equal_pair_of_differences_certain():
    from scipy.stats import t as student_t

    from adr_scale.search.stats import paired_test, pooled_paired_tests

    one_third = -1 / 300  # one validation image of 300, on both seeds
    assert paired_test([0.80, 0.81], [0.80 - one_third, 0.81 - one_third]).p == 0.0  # alone: p 0
    tests = pooled_paired_tests({"close": [one_third, one_third], "far": [-0.05, -0.03]})
    s = math.sqrt(((-0.05 + 0.04) ** 2 + (-0.03 + 0.04) ** 2) / 2)  # 2 degrees of freedom
    assert tests["far"].std == pytest.approx(s) and tests["close"].std == pytest.approx(s)
    t_far = -0.04 / (s / math.sqrt(2))
    assert tests["far"].p_less == pytest.approx(student_t.cdf(t_far, 2))
    assert tests["far"].p_less < 0.05 < tests["close"].p_less  # only the far one would stop
    flat = pooled_paired_tests({"a": [-0.1, -0.1], "b": [-0.2, -0.2]})
    assert all(math.isnan(t.p) and t.p_less == 1.0 for t in flat.values())  # no noise estimate
