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
    from adr_scale.config import format_segments, parse_segments
    from adr_scale.schedules import adr_values

    text = format_segments([(0.0, 2.5, 2.0, 0.7, 0.95), (0.5, 1.8, 1.2, 0.6, 0.9)])
    assert text == "0:2.5,2,0.7,0.95;0.5:1.8,1.2,0.6,0.9"
    segments = parse_segments(text)
    assert segments == [(0.0, 2.5, 2.0, 0.7, 0.95), (0.5, 1.8, 1.2, 0.6, 0.9)]
    # before half-way: the first ranges; after: the second, at any run length
    for total in (100, 1000):
        assert adr_values(9, 9, 0, 0, segments, total // 4, total) == pytest.approx(
            (cosine_anneal(2.5, 2.0, 1, 4), cosine_anneal(0.7, 0.95, 1, 4)))
        assert adr_values(9, 9, 0, 0, segments, 3 * total // 4, total) == pytest.approx(
            (cosine_anneal(1.8, 1.2, 3, 4), cosine_anneal(0.6, 0.9, 3, 4)))
    assert adr_values(2.5, 2.0, 0.7, 0.95, (), 0, 10) == pytest.approx((2.5, 0.7))
    # the text keeps every digit where six significant ones would round
    exact = [(0.0, 2.6130868463894447, 1.5, 0.1, 0.9), (2 / 3, 2.0, 1.0, 0.0, 0.5)]
    assert parse_segments(format_segments(exact)) == exact
    for bad in ("0.5:1,1,0.5,0.5", "0:1,1,0.5", "0:1,1,0.5,0.5;0:1,1,0.5,0.5"):
        with pytest.raises(ValueError):
            parse_segments(bad)


def test_bad_segments_in_config_are_one_line():
    from adr_scale.config import ConfigError, apply_overrides, get_preset

    with pytest.raises(ConfigError, match=r"adr.segments: invalid value '0:1,1,2,0.5'"):
        apply_overrides(get_preset("smoke"), ["adr.segments='0:1,1,2,0.5'"])
    with pytest.raises(ConfigError, match=r"^adr.segments: invalid value '0:1,1,2,1.5'; "
                                          r"temperatures must be > 0 and lambdas in \[0, 1\]$"):
        apply_overrides(get_preset("smoke"), ["adr.segments=[[0, 1, 1, 2, 1.5]]"])
    with pytest.raises(ConfigError, match=r"^adr.segments: invalid value '0.5:1,1,0.5,0.5'; "
                                          r"segment fractions must start at 0"):
        apply_overrides(get_preset("smoke"), ["adr.segments=[[0.5, 1, 1, 0.5, 0.5]]"])
    with pytest.raises(ConfigError, match=r"^adr.segments: invalid value \[\[0, 1, 1\]\]; "
                                          r"allowed: a list of \[fraction, tau_start"):
        apply_overrides(get_preset("smoke"), ["adr.segments=[[0, 1, 1]]"])


def test_segments_are_typed_once_and_read_in_both_forms(tmp_path):
    """Text (configs and checkpoints written before, --set) and a YAML list both read; to_dict and
    dump_yaml write the text, which reads back equal; the schedule is never parsed per step."""
    import yaml

    from adr_scale.config import (
        ConfigError,
        Segment,
        apply_overrides,
        dump_yaml,
        from_dict,
        get_preset,
        load_yaml,
        to_dict,
        with_values,
    )

    smoke = get_preset("smoke")
    learned = (Segment(0.0, 2.5, 2.0, 0.7, 0.95), Segment(2 / 3, 3.358771234567, 2.95877, 0.0, 0.1))
    cfg = with_values(smoke, {"adr.segments": [list(s) for s in learned]})
    assert cfg.adr.segments == learned and isinstance(cfg.adr.segments[1], Segment)
    text = to_dict(cfg)["adr"]["segments"]
    assert text == "0:2.5,2,0.7,0.95;" + repr(2 / 3) + ":3.358771234567,2.95877,0,0.1"
    dump_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(tmp_path / "c.yaml").adr.segments == learned  # round trip
    assert to_dict(load_yaml(tmp_path / "c.yaml")) == to_dict(cfg)
    listed = tmp_path / "list.yaml"  # the YAML list form
    listed.write_text(yaml.safe_dump({"adr": {"segments": [list(s) for s in learned]}}))
    assert load_yaml(listed, base=smoke).adr.segments == learned
    old = to_dict(smoke) | {"adr": to_dict(smoke)["adr"] | {"segments": "0:2.5,2,0.7,0.95"}}
    assert from_dict(old).adr.segments == (Segment(0.0, 2.5, 2.0, 0.7, 0.95),)  # a checkpoint's
    assert apply_overrides(smoke, ["adr.segments=0:2.5,2,0.7,0.95"]).adr.segments == (
        (0.0, 2.5, 2.0, 0.7, 0.95),)
    assert to_dict(smoke)["adr"]["segments"] == "" and from_dict(to_dict(smoke)).adr.segments == ()
    with pytest.raises(ConfigError, match=r"^adr.segments: invalid value '0:2.5,2,0.7,0.95'; "
                                          r"allowed: a list of \[fraction, "):
        with_values(smoke, {"adr.segments": "0:2.5,2,0.7,0.95"})  # typed path: no text parsing
