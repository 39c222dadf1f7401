import pytest
import yaml

from adr_scale.config import ConfigError
from adr_scale.search.space import DefineByRun, load_space, parse_space

SMOKE = yaml.safe_load(open("tests/assets/ci_space.yaml"))


def _with(**changes):
    raw = yaml.safe_load(yaml.safe_dump(SMOKE))
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def test_bundled_spaces_parse_and_warm_start_is_the_paper_setting():
    expected = {"cifar10": (2.5, 2.0, 0.7, 0.95), "cifar100": (1.5, 1.0, 0.7, 0.95),
                "tinyimagenet200": (2.0, 1.5, 0.5, 0.9), "smoke": (2.5, 2.0, 0.7, 0.95)}
    for name, (t0, t1, l0, l1) in expected.items():
        space = load_space(f"search_spaces/{name}.yaml")
        cfg = space.trial_config(space.warm_start_params())
        assert (cfg.adr.tau_start, cfg.adr.tau_end) == pytest.approx((t0, t1))
        assert (cfg.adr.lambda_start, cfg.adr.lambda_end) == pytest.approx((l0, l1))
        assert cfg.train.epochs == space.budget.epochs and cfg.adr.enabled
        long = space.long_run_config(space.warm_start_params())
        assert long.train.epochs == (80 if name == "tinyimagenet200" else 15 if name == "smoke"
                                     else 200)
    assert load_space("search_spaces/cifar100_awp.yaml").long_run_config(
        load_space("search_spaces/cifar100_awp.yaml").warm_start_params()).awp.enabled


class _Trial:
    """A stand-in for optuna.Trial that draws the upper end of every range."""

    def __init__(self):
        self.params = {}

    def suggest_float(self, name, low, high, log=False):
        self.params[name] = high
        return high

    def suggest_int(self, name, low, high, step=1):
        self.params[name] = high
        return high

    def suggest_categorical(self, name, choices):
        self.params[name] = choices[-1]
        return choices[-1]


def test_ordering_holds_by_construction_and_lambda_is_capped_at_one():
    space = load_space("tests/assets/ci_space.yaml")
    trial = _Trial()
    DefineByRun(space)(trial)
    fields = space.field_values(trial.params)
    assert fields["adr.tau_start"] == pytest.approx(3.0 + 1.0)  # tau_end high + gap high
    assert fields["adr.lambda_end"] == pytest.approx(1.0)  # 0.9 + min(0.4, 1 - 0.9)
    cfg = space.trial_config(trial.params)  # validates
    assert cfg.adr.tau_start >= cfg.adr.tau_end and cfg.adr.lambda_end <= 1.0


def test_real_optuna_samples_keep_the_ordering():
    import optuna

    space = load_space("tests/assets/ci_space.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(50):
        trial = study.ask()
        DefineByRun(space)(trial)
        cfg = space.trial_config(trial.params)
        assert cfg.adr.tau_end <= cfg.adr.tau_start and cfg.adr.lambda_start <= cfg.adr.lambda_end
        assert 0.0 <= cfg.adr.lambda_end <= 1.0
        study.tell(trial, 0.0)


@pytest.mark.parametrize("changes, message", [
    ({"sampler": {"type": "cmaes"}}, r"sampler.type: invalid value 'cmaes'; allowed: random, tpe"),
    ({"scheduler": {"type": "hyperband"}},
     r"scheduler.type: invalid value 'hyperband'; allowed: asha, halving, none, pbt"),
    ({"scheduler": {"type": "asha", "grace": 1}}, r"scheduler.grace: not a setting of the asha"),
    ({"objective": "accuracy"}, r"objective: invalid value 'accuracy'; allowed: pareto, robust"),
    ({"base": "nope"}, r"base: unknown preset 'nope'"),
    ({"params": None}, r"missing key 'params'"),
    ({"epochs": 3}, r"unknown key 'epochs'; allowed: base, budget"),
    ({"params": {"adr.tau_end": {"distribution": "normal", "low": 0, "high": 1}}},
     r"params.adr.tau_end.distribution: invalid value 'normal'; allowed: categorical, int, "
     r"loguniform, uniform"),
    ({"params": {"adr.tau_end": {"distribution": "uniform", "low": 3.0, "high": 1.0}}},
     r"params.adr.tau_end: inverted bounds low=3 > high=1"),
    ({"params": {"adr.temperature": {"distribution": "uniform", "low": 1, "high": 2}}},
     r"params.adr.temperature: 'adr.temperature' is not a config field"),
    ({"params": {"optim.lr": {"distribution": "loguniform", "low": 0, "high": 1}}},
     r"params.optim.lr.low: 0 must be > 0 for a loguniform"),
    ({"params": {"adr.tau_start": {"distribution": "uniform", "low": 0, "high": 1,
                                   "above": "adr.tau_end"}}},
     r"params.adr.tau_start.above: 'adr.tau_end' is not a searched parameter"),
    ({"params": {"adr.tau_end": {"distribution": "uniform", "low": -2.0, "high": -1.0}},
      "warm_start": None}, r"the space gives an invalid config: adr.tau_end"),
    ({"warm_start": {"adr.tau_start": 2.5}}, r"warm_start: missing a value for"),
    ({"budget": {"epochs": 0}}, r"budget.epochs: invalid value 0"),
    ({"scheduler": {"type": "halving", "reduction_factor": 1}},
     r"scheduler.reduction_factor: invalid value 1; allowed: an integer >= 2"),
    ({"scheduler": {"type": "halving", "grace_period": 4}},
     r"scheduler.grace_period: 4 leaves no rung below budget.epochs=4"),
    ({"scheduler": {"type": "pbt", "synch": "yes"}},
     r"scheduler.synch: invalid value 'yes'; allowed: true or false"),
    ({"scheduler": {"type": "halving", "brackets": 3}},
     r"scheduler.brackets: not a setting of the halving scheduler; allowed: grace_period, "
     r"reduction_factor, type"),
])
def test_malformed_spaces_are_refused_with_one_line(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_space(_with(**changes), source="bad.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("bad.yaml: ")


def test_yaml_syntax_and_missing_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nparams: {adr.tau_end: [1,\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML \(line"):
        load_space(broken)
    with pytest.raises(ConfigError, match="--space: file .* does not exist"):
        load_space(tmp_path / "none.yaml")


def test_pbt_ranks_asynchronously_unless_synch_is_set():
    from adr_scale.search.driver import _scheduler

    assert parse_space(_with(scheduler={"type": "pbt"})).scheduler.synch is False  # Tune's default
    space = parse_space(_with(scheduler={"type": "pbt", "synch": True, "quantile_fraction": 0.5}))
    pbt = _scheduler(space)
    assert (space.scheduler.synch, pbt._synch, pbt._quantile_fraction) == (True, True, 0.5)


def test_a_trials_train_run_stops_at_the_rungs_under_halving_only():
    from adr_scale.search.trial import trial_stops

    halving = {"type": "halving", "grace_period": 1, "reduction_factor": 4}
    assert trial_stops(parse_space(_with(scheduler=halving, budget={"epochs": 16}))) == [1, 4, 16]
    assert trial_stops(parse_space(_with(scheduler=halving, budget={"epochs": 16})),
                       reference=True) == [16]  # a reference is never paused at a rung
    assert trial_stops(parse_space(_with(scheduler=halving | {"grace_period": 2},
                                         budget={"epochs": 9}))) == [2, 8, 9]
    asha = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
    assert trial_stops(parse_space(_with(scheduler=asha, budget={"epochs": 4}))) == [4]


def test_successive_halving_parses_and_costs_what_its_rungs_say():
    from adr_scale.search.rungs import halving_cost, rung_milestones

    space = parse_space(_with(scheduler={"type": "halving", "grace_period": 1,
                                         "reduction_factor": 3}, budget={"epochs": 9}))
    sched = space.scheduler
    assert (sched.type, sched.grace_period, sched.reduction_factor) == ("halving", 1, 3)
    assert rung_milestones(9, 1, 3) == [1, 3] and rung_milestones(27, 1, 3) == [1, 3, 9]
    assert rung_milestones(16, 1, 4) == [1, 4] and rung_milestones(4, 2, 2) == [2]
    # 27 trials: 27 x 1 epoch, 9 to epoch 3 (+2 each), 3 to epoch 9 (+6 each) = 63 of 243
    assert halving_cost(27, 9, 1, 3) == 27 + 9 * 2 + 3 * 6
    assert halving_cost(27, 27, 1, 3) == 27 + 9 * 2 + 3 * 6 + 1 * 18  # 81 of 729: 0.111
    assert halving_cost(2, 4, 1, 3) == 2 + 1 * 3  # never fewer than one trial continues
    # the two references run the whole budget outside the bracket: 25 -> 8 -> 2 -> 1 of the rest
    assert halving_cost(27, 16, 1, 3, references=2) == 2 * 16 + 25 + 8 * 2 + 2 * 6 + 1 * 7
    assert halving_cost(2, 4, 1, 3, references=2) == 2 * 4  # an empty bracket costs nothing


def test_a_trial_without_a_result_since_a_restore_keeps_its_id_and_params(tmp_path):
    """Tune gives such a trial's Result no config (it comes from the last result): the report
    reads the id from the trial folder's name and the params from its params.json."""
    import json

    from adr_scale.search.report import _saved_params, _trial_id_of

    trial = tmp_path / "run_trial_ab12cd34_3_adr_tau_end=2.0000_2026-12-03_08-50-31"
    trial.mkdir()
    assert _saved_params(str(trial)) == {}
    (trial / "params.json").write_text(json.dumps({"adr.tau_end": 2.0}))
    assert _trial_id_of(str(trial)) == "ab12cd34"
    assert _saved_params(str(trial)) == {"adr.tau_end": 2.0}


def test_a_small_search_starts_from_sobol_points_seeded_per_dataset():
    import optuna

    from adr_scale.search.driver import _first_points
    from adr_scale.search.space import DefineByRun

    raw = yaml.safe_load(open("tests/assets/ci_space.yaml"))
    space = parse_space(raw)
    assert space.startup_count(6) == 4 and space.startup_count(40) == 10
    assert parse_space(raw | {"sampler": {"type": "random"}}).startup_count(6) == 0
    points = _first_points(space, 6)
    assert points[:2] == list(space.reference_points().values()) and len(points) == 6
    sobol = points[2:]
    assert sobol == space.startup_points(4, space.startup_seed())  # the same on every run
    tau_end = sorted(p["adr.tau_end"] for p in sobol)  # U(1, 3): one point per quarter
    assert [int((t - 1.0) / 0.5) for t in tau_end] == [0, 1, 2, 3]
    assert all(p["adr.lambda_start"] + p["adr.lambda_end - adr.lambda_start"] <= 1.0
               for p in space.startup_points(16, 7))  # gaps capped as suggest caps them
    other = parse_space(raw | {"fixed": raw["fixed"] | {"data.root": "/data/other"}})
    assert other.startup_seed() != space.startup_seed()
    assert other.startup_points(4, other.startup_seed()) != sobol
    study = optuna.create_study(direction="maximize")  # a real study takes each point as is
    for p in sobol:
        study.enqueue_trial(p)
    study.optimize(lambda t: DefineByRun(space)(t) or 0.0, n_trials=4)
    assert [t.params for t in study.trials] == sobol


def test_a_trials_config_is_built_from_typed_values_and_validated_once(monkeypatch):
    """The sampled values are set as floats (no YAML text round trip), and each config built is
    validated once (the preset, fixed, fidelity and sampled values used to take four)."""
    import adr_scale.config.io as config_io
    import adr_scale.config.presets as presets
    from adr_scale.config.schema import validate

    calls = []

    def counting(cfg):
        calls.append(cfg)
        return validate(cfg)

    monkeypatch.setattr(config_io, "validate", counting)
    monkeypatch.setattr(presets, "validate", counting)
    space = load_space("search_spaces/smoke.yaml")
    params = {"adr.tau_end": 1.2345678901234567, "adr.tau_start - adr.tau_end": 0.1,
              "adr.lambda_start": 0.3, "adr.lambda_end - adr.lambda_start": 0.2}
    calls.clear()
    cfg = space.trial_config(params)
    assert len(calls) == 1
    assert cfg.adr.tau_end == 1.2345678901234567  # every digit: never printed and parsed back
    assert (cfg.train.epochs, cfg.train.batch_size) == (space.budget.epochs, 8)  # fidelity, fixed
    calls.clear()
    long = space.long_run_config(params, seed=5)
    assert len(calls) == 1 and (long.seed, long.train.epochs) == (5, 15)


def test_fixed_values_are_typed_when_the_space_is_read():
    raw = _with(fixed={"optim.lr": "1e-3", "train.batch_size": 16, "optim.warmup_epochs": 0})
    space = parse_space(raw)
    assert space.fixed == {"optim.lr": 0.001, "train.batch_size": 16, "optim.warmup_epochs": 0.0}
    with pytest.raises(ConfigError, match=r"^bad.yaml: fixed: train.batch_size: invalid value "
                                          r"'many'; allowed: an integer$"):
        parse_space(_with(fixed={"train.batch_size": "many"}), source="bad.yaml")


def test_a_choice_field_is_searched_by_categorical_only():
    params = {"train.method": {"distribution": "uniform", "low": 0, "high": 1}}
    with pytest.raises(ConfigError, match=r"params.train.method.distribution: 'uniform' samples "
                                          r"non-integers for the str field train.method; allowed: "
                                          r"categorical$"):
        parse_space(_with(params=SMOKE["params"] | params, warm_start=None), source="bad.yaml")


def test_the_space_is_read_by_the_run_configs_path_into_nested_records():
    from adr_scale.search.space import Budget, ConfirmSpec, SamplerSpec, SchedulerSpec

    space = parse_space(_with(scheduler="halving", sampler={"type": "random", "seed": 3},
                              budget={"epochs": 6}, confirm={"mode": "grid"}, fixed=None))
    assert space.scheduler == SchedulerSpec(type="halving")  # the commented defaults
    assert space.sampler == SamplerSpec(type="random", seed=3) and space.budget == Budget(epochs=6)
    assert space.confirm == ConfirmSpec(mode="grid", seeds=3, min_seeds=2)  # grid: 3 seeds
    assert space.fixed == {}  # an empty block: its defaults
    for changes, message in [
        ({"budget": {"epochs": 3, "min": 1}}, r"^bad.yaml: unknown key 'budget.min'; allowed in "
                                              r"budget: epochs$"),
        ({"pbt": {"interval": 2}}, r"^bad.yaml: unknown key 'pbt'; allowed: base, budget, "
                                   r"confirm, fixed, long_run, max_concurrent, name, note, "
                                   r"num_samples, objective, params, references, sampler, "
                                   r"scheduler, search, warm_start$"),
        ({"budget": 3}, r"^bad.yaml: budget: expected a mapping, got 3$"),
        ({"num_samples": "8"}, r"^bad.yaml: num_samples: invalid value '8'; allowed: an integer$"),
        ({"params": {"adr.tau_end": {"low": 1, "high": 2}}},
         r"^bad.yaml: missing key 'params.adr.tau_end.distribution'$"),
        ({"params": {"adr.tau_end": {"distribution": "uniform", "low": 1, "high": 2, "by": 1}}},
         r"^bad.yaml: unknown key 'params.adr.tau_end.by'; allowed in params.adr.tau_end: above, "
         r"choices, distribution, high, low, step$"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_space(_with(**changes), source="bad.yaml")
