import pytest

from adr_scale.schedules import cosine_anneal, cyclic_lr, learning_rate, piecewise_lr


def test_cosine_anneal_end_points_and_midpoint():
    assert cosine_anneal(2.5, 2.0, 0, 100) == pytest.approx(2.5)
    assert cosine_anneal(2.5, 2.0, 100, 100) == pytest.approx(2.0)
    assert cosine_anneal(2.5, 2.0, 50, 100) == pytest.approx(2.25)
    assert cosine_anneal(0.7, 0.95, 25, 100) == pytest.approx(0.95 + (0.7 - 0.95) * (1 + 2**-0.5) / 2)


def test_tau_falls_and_lambda_rises_monotonically():
    taus = [cosine_anneal(1.5, 1.0, i, 200) for i in range(201)]
    lams = [cosine_anneal(0.7, 0.95, i, 200) for i in range(201)]
    assert all(a >= b for a, b in zip(taus, taus[1:], strict=False))
    assert all(a <= b for a, b in zip(lams, lams[1:], strict=False))
    assert taus[0] > taus[-1] and lams[0] < lams[-1]


def test_piecewise_divides_by_ten_at_half_and_three_quarters():
    values = [piecewise_lr(0.1, s, 100) for s in (0, 49, 50, 74, 75, 99)]
    assert values == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cyclic_warms_up_linearly_then_cosines_to_zero():
    total, warm = 400, 10
    lrs = [cyclic_lr(0.4, s, total, warm) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(0.04) and lrs[4] == pytest.approx(0.2)
    assert max(lrs) == pytest.approx(0.4) and lrs[9] == pytest.approx(0.4)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule_names_field():
    with pytest.raises(ValueError, match="optim.schedule.*'step'.*cyclic, piecewise"):
        learning_rate("step", 0.1, 0, 10)


def test_learned_segments_replay_by_fraction_of_training():
    from adr_scale.schedules import adr_values, format_segments, parse_segments

    text = format_segments([(0.0, 2.5, 2.0, 0.7, 0.95), (0.5, 1.8, 1.2, 0.6, 0.9)])
    assert parse_segments(text) == [(0.0, 2.5, 2.0, 0.7, 0.95), (0.5, 1.8, 1.2, 0.6, 0.9)]
    # before half-way: the first ranges; after: the second, at any run length
    for total in (100, 1000):
        assert adr_values(9, 9, 0, 0, text, total // 4, total) == pytest.approx(
            (cosine_anneal(2.5, 2.0, 1, 4), cosine_anneal(0.7, 0.95, 1, 4)))
        assert adr_values(9, 9, 0, 0, text, 3 * total // 4, total) == pytest.approx(
            (cosine_anneal(1.8, 1.2, 3, 4), cosine_anneal(0.6, 0.9, 3, 4)))
    assert adr_values(2.5, 2.0, 0.7, 0.95, "", 0, 10) == pytest.approx((2.5, 0.7))
    for bad in ("0.5:1,1,0.5,0.5", "0:1,1,0.5", "0:1,1,0.5,0.5;0:1,1,0.5,0.5"):
        with pytest.raises(ValueError):
            parse_segments(bad)


def test_bad_segments_in_config_are_one_line():
    from adr_scale.config import ConfigError, apply_overrides, get_preset

    with pytest.raises(ConfigError, match=r"adr.segments: invalid value '0:1,1,2,0.5'"):
        apply_overrides(get_preset("smoke"), ["adr.segments='0:1,1,2,0.5'"])
