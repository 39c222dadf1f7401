"""Typed configuration of a whole run: dataclasses, named presets, YAML and `--set` overrides.

Every setting of the paper's Sec. 5.1 (ResNet-18 / WRN-34-10, AT / TRADES, ADR, AWP, WA on CIFAR-10,
CIFAR-100, TinyImageNet-200) and Sec. 5.4 (PreAct-ResNet-18 / WRN-34-10 with 1M DDPM images) is a
named preset; YAML lives only at the edges (exported configs, run directories).

  schema    the dataclasses (choice fields as Literal) and their validation
  io        dict / YAML conversion, coercion to the declared types, `--set` overrides
  presets   the preset registry and the project's own presets
  official  the official configurations' differences from the paper text; the generated grid
"""

from adr_scale.config.io import (
    apply_overrides,
    attack_line,
    dump_yaml,
    from_dict,
    load_yaml,
    parse_override,
    parse_value,
    read_yaml_file,
    to_dict,
    with_values,
)
from adr_scale.config.official import ddpm_base, ddpm_paper_text, gin_file, paper_base
from adr_scale.config.presets import (
    OFFICIAL_CODE,
    PAPER_TEXT,
    PRESETS,
    RECIPES,
    SOURCES,
    describe_preset,
    get_preset,
    paper_overrides,
    paper_text,
    preset,
    preset_doc,
    svhn_base,
)
from adr_scale.config.schema import (
    ACTIVATIONS,
    ARCHS,
    COMPILE_BACKENDS,
    DATASETS,
    GENERIC_DATASETS,
    METHODS,
    PRECISIONS,
    SCHEDULES,
    TRADES_ATTACKS,
    ADRConfig,
    AttackConfig,
    AWPConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    Segment,
    TrainConfig,
    allow_name,
    allowed_names,
    format_segments,
    parse_segments,
    validate,
)

__all__ = [
    "ACTIVATIONS", "ARCHS", "COMPILE_BACKENDS", "DATASETS", "GENERIC_DATASETS", "METHODS",
    "OFFICIAL_CODE", "PAPER_TEXT", "PRECISIONS", "PRESETS", "RECIPES", "SCHEDULES", "SOURCES",
    "TRADES_ATTACKS", "ADRConfig", "allow_name", "allowed_names", "apply_overrides", "attack_line",
    "AttackConfig", "AWPConfig", "ConfigError", "DataConfig", "ddpm_base", "ddpm_paper_text",
    "describe_preset", "dump_yaml", "format_segments", "from_dict", "get_preset", "gin_file",
    "load_yaml", "ModelConfig", "OptimConfig", "paper_base", "paper_overrides", "paper_text",
    "parse_override", "parse_segments", "parse_value", "preset", "preset_doc", "read_yaml_file", "RunConfig",
    "Segment", "svhn_base", "to_dict", "TrainConfig", "validate", "with_values",
]
