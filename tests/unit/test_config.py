import pytest

from adr_scale.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    apply_overrides,
    dump_yaml,
    from_dict,
    get_preset,
    load_yaml,
    to_dict,
)


def test_yaml_round_trip_of_every_preset(tmp_path):
    for name in PRESETS:
        cfg = get_preset(name)
        path = tmp_path / f"{name}.yaml"
        dump_yaml(cfg, path)
        assert to_dict(load_yaml(path)) == to_dict(cfg), name


def test_paper_grid_and_settings():
    grid = [n for n in PRESETS if n.startswith(("cifar10_", "cifar100_", "tinyimagenet200_"))
            and not n.endswith("_standard") and "ddpm" not in n]
    assert len(grid) == 3 * 2 * 2 * 8
    c100 = get_preset("cifar100_resnet18_trades_wa_awp_adr")
    assert (c100.adr.tau_start, c100.adr.tau_end) == (1.5, 1.0)
    assert (c100.adr.lambda_start, c100.adr.lambda_end) == (0.7, 0.95)
    assert c100.train.method == "trades" and c100.train.wa and c100.awp.enabled and c100.adr.enabled
    assert c100.awp.gamma == 0.005 and c100.train.trades_beta == 6.0 and c100.train.epochs == 200
    tin = get_preset("tinyimagenet200_wrn34_10_at_adr")
    assert (tin.adr.tau_start, tin.adr.tau_end, tin.adr.lambda_start, tin.adr.lambda_end) == (
        2.0, 1.5, 0.5, 0.9)
    assert tin.train.epochs == 80 and not tin.awp.enabled and not tin.train.wa
    c10 = get_preset("cifar10_resnet18_at")
    assert (c10.adr.tau_start, c10.adr.tau_end) == (2.5, 2.0) and not c10.adr.enabled
    assert c10.optim.schedule == "piecewise" and c10.optim.lr == 0.1 and c10.train.batch_size == 128
    assert c10.attack.eps == 8 / 255 and c10.attack.alpha == 2 / 255 and c10.attack.steps == 10


def test_ddpm_and_standard_presets():
    d = get_preset("cifar100_preact_resnet18_ddpm_at_adr")
    assert d.model.arch == "preact_resnet18_dm" and d.model.activation == "silu"
    assert not d.awp.enabled  # AWP-free by name; the official DDPM runs are *_ddpm_at_awp_adr
    assert d.train.batch_size == 1024 and d.data.synthetic_fraction == 0.75
    assert d.optim.schedule == "cyclic" and d.optim.lr == 0.4 and d.optim.warmup_epochs == 10
    assert d.train.epochs == 400
    s = get_preset("cifar10_resnet18_standard")
    assert s.train.method == "standard" and not s.adr.enabled


def test_overrides_parse_yaml_scalars():
    cfg = apply_overrides(get_preset("smoke"), ["adr.tau_start=3", "train.max_steps=5",
                                                "data.flip=true", "seed=7", "optim.lr=1e-3"])
    assert cfg.adr.tau_start == 3.0 and isinstance(cfg.adr.tau_start, float)
    assert cfg.train.max_steps == 5 and cfg.data.flip is True and cfg.seed == 7
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert apply_overrides(cfg, ["train.max_steps=null"]).train.max_steps is None


@pytest.mark.parametrize("override, message", [
    ("adr.tau_start=-1", r"adr.tau_start: invalid value -1.0; allowed: a temperature > 0"),
    ("adr.lambda_start=1.5", r"adr.lambda_start: invalid value 1.5; allowed: a number in \[0, 1\]"),
    ("adr.lambda_end=-0.1", r"adr.lambda_end: invalid value -0.1"),
    ("model.arch=vgg", r"model.arch: invalid value 'vgg'; allowed: .*resnet18"),
    ("data.dataset=imagenet", r"data.dataset: invalid value 'imagenet'; allowed: cifar10, cifar100, digits, fashion_mnist, imagefolder"),
    ("train.method=mart", r"train.method: invalid value 'mart'; allowed: at, standard, trades"),
    ("optim.schedule=step", r"optim.schedule: invalid value 'step'"),
    ("adr.nope=1", r"unknown key 'adr.nope'; allowed in adr: "),
    ("nope.key=1", r"--set: unknown key 'nope'"),
    ("train.epochs=ten", r"train.epochs: invalid value 'ten'; allowed: an integer"),
    ("train.batch_size=1.5", r"train.batch_size: invalid value 1.5; allowed: an integer"),
    ("adr.enabled=3", r"adr.enabled: invalid value 3; allowed: true or false"),
    ("adr.tau_end=9", r"adr.tau_end: 9.0 is above adr.tau_start"),
    ("tau_start", r"--set: 'tau_start' is not of the form section.key=value"),
])
def test_bad_overrides_name_field_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_preset("smoke"), [override])


def test_unknown_preset_and_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="--preset: unknown preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("adr: {tau_start: [1,\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML \(line"):
        load_yaml(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("adr:\n  temperature: 2\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: unknown key 'adr.temperature'"):
        load_yaml(unknown)
    with pytest.raises(ConfigError, match="unknown key 'optimizer'"):
        from_dict({"optimizer": {}}, source="x")


def test_partial_yaml_keeps_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("adr:\n  enabled: true\n  tau_start: 1.5\n  tau_end: 1.0\n")
    cfg = load_yaml(path)
    assert cfg.adr.enabled and cfg.adr.tau_end == 1.0
    assert cfg.train.epochs == RunConfig().train.epochs


def test_choice_fields_are_literals_and_their_tuples_come_from_them():
    import dataclasses
    import typing

    from adr_scale.config import COMPILE_BACKENDS, METHODS, PRECISIONS, SCHEDULES, TRADES_ATTACKS
    from adr_scale.config.schema import OptimConfig, TrainConfig

    train, optim = typing.get_type_hints(TrainConfig), typing.get_type_hints(OptimConfig)
    assert typing.get_args(train["method"]) == METHODS == ("at", "standard", "trades")
    assert typing.get_args(train["precision"]) == PRECISIONS
    assert typing.get_args(train["compile_backend"]) == COMPILE_BACKENDS
    assert typing.get_args(train["trades_attack"]) == TRADES_ATTACKS
    assert typing.get_args(optim["schedule"]) == SCHEDULES
    # a choice set in Python (a preset's edit) is checked by validate, from the same Literal
    cfg = get_preset("smoke")
    cfg.train = dataclasses.replace(cfg.train, precision="fp16")
    with pytest.raises(ConfigError, match=r"^train.precision: invalid value 'fp16'; allowed: "
                                          r"bf16, fp32$"):
        from adr_scale.config import validate

        validate(cfg)


@pytest.mark.parametrize("override, message", [
    ("train.method=5", r"^train.method: invalid value 5; allowed: at, standard, trades$"),
    ("data.tar_reader=tarfile", r"^data.tar_reader: invalid value 'tarfile'; allowed: fast, "
                                r"webdataset$"),
    ("train.checkpoint_upload=later", r"^train.checkpoint_upload: invalid value 'later'; "
                                      r"allowed: async, sync$"),
])
def test_bad_choices_are_one_line_naming_field_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_preset("smoke"), [override])


def test_with_values_sets_typed_values_and_validates_once():
    from adr_scale.config import with_values

    base = get_preset("smoke")
    cfg = with_values(base, {"adr.tau_start": 3, "adr.tau_end": 2.3, "train.max_steps": None,
                             "data.mean": (0.5,), "data.std": [0.25], "seed": 4})
    assert cfg.adr.tau_start == 3.0 and isinstance(cfg.adr.tau_start, float)  # int -> float
    assert (cfg.adr.tau_end, cfg.train.max_steps, cfg.data.mean, cfg.seed) == (2.3, None, [0.5], 4)
    assert base.adr.tau_start == 2.5 and base.data.mean is None  # a new config; base unchanged
    for values, message in [
        ({"adr.tau_start": "2.3"}, r"^adr.tau_start: invalid value '2.3'; allowed: a number$"),
        ({"optim.lr": "1e-3"}, r"^optim.lr: invalid value '1e-3'; allowed: a number$"),
        ({"train.epochs": True}, r"^train.epochs: invalid value True; allowed: an integer$"),
        ({"train.method": "mart"}, r"^train.method: invalid value 'mart'; allowed: at, "),
        ({"adr.temperature": 1.0}, r"^values: unknown key 'adr.temperature'; allowed in adr: "),
        ({"adr.tau_end": 9.0}, r"^adr.tau_end: 9.0 is above adr.tau_start"),  # validated
    ]:
        with pytest.raises(ConfigError, match=message):
            with_values(base, values)


def test_the_generic_dataclass_reader_names_file_key_and_allowed_keys():
    from adr_scale.config.io import dataclass_from_dict

    base = get_preset("smoke")
    cfg = dataclass_from_dict(RunConfig, {"adr": {"tau_end": 1}, "seed": 3}, source="c.yaml",
                              base=base)
    assert (cfg.adr.tau_end, cfg.seed, cfg.adr.tau_start) == (1.0, 3, base.adr.tau_start)
    assert cfg.train is not base.train and cfg.train == base.train  # copied, not shared
    assert dataclass_from_dict(RunConfig, {}, source="c.yaml") == RunConfig()
    for raw, message in [
        ({"adr": {"tau": 1}}, r"^c.yaml: unknown key 'adr.tau'; allowed in adr: ema_decay, "),
        ({"optimizer": {}}, r"^c.yaml: unknown key 'optimizer'; allowed: adr, attack, awp, "),
        ({"adr": 3}, r"^c.yaml: adr: expected a mapping, got 3$"),
        ({"train": {"epochs": "ten"}}, r"^c.yaml: train.epochs: invalid value 'ten'; allowed: "
                                       r"an integer$"),
        ([1, 2], r"^c.yaml: expected a mapping at the top level, got list$"),
    ]:
        with pytest.raises(ConfigError, match=message):
            dataclass_from_dict(RunConfig, raw, source="c.yaml")
