"""Conversion of the run config to and from plain dicts and YAML, and `--set a.b=value` overrides.

YAML lives only at the edges (exported configs, run directories); every value read is coerced to
its field's declared type here, and an unknown key is one ConfigError line naming it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from adr_scale.config.schema import (
    ConfigError,
    RunConfig,
    Segment,
    field_types,
    format_segments,
    parse_segments,
    validate,
)

T = TypeVar("T")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain values, as YAML, checkpoints and run names hold them; adr.segments in its text form
    (what configs held before it was typed, so their comparisons and hashes stay the same)."""
    out = dataclasses.asdict(cfg)
    out["adr"]["segments"] = format_segments(cfg.adr.segments)
    return out


def _coerce(key: str, value: Any, annotation: Any, *, text: bool = True) -> Any:
    """Convert a value to the field's declared type, or raise ConfigError. `text`: the value was
    read from YAML or `--set` text, where YAML 1.1 leaves 1e-3 (no dot) a string; a typed value
    (text=False) is only checked and widened (int -> float)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], text=text)
    if annotation is Any:
        return value
    if annotation == tuple[Segment, ...]:
        return _segments(key, value, text=text)
    if dataclasses.is_dataclass(annotation):  # a record built by its owner (a search parameter)
        if isinstance(value, annotation):
            return value
        raise ConfigError(f"{key}: invalid value {value!r}; allowed: a {annotation.__name__}")
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: invalid value {value!r}; allowed: a list, e.g. [a, b]")
        items = [_coerce(f"{key}[{i}]", v, args[0], text=text) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: invalid value {value!r}; allowed: a mapping")
        return {k: _coerce(f"{key}.{k}", v, args[1], text=text) for k, v in value.items()}
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise ConfigError(f"{key}: invalid value {value!r}; allowed: {', '.join(args)}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: invalid value {value!r}; allowed: true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: invalid value {value!r}; allowed: an integer")
    if annotation is float:
        if text and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{key}: invalid value {value!r}; allowed: a finite number")
            return float(value)
        raise ConfigError(f"{key}: invalid value {value!r}; allowed: a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: invalid value {value!r}; allowed: a string")
    raise AssertionError(f"unsupported annotation {annotation} for {key}")


def _segments(key: str, value: Any, *, text: bool) -> tuple[Segment, ...]:
    """adr.segments from its text form (YAML, --set, checkpoints) or a list of 5-number lists."""
    if text and isinstance(value, str):
        try:
            return tuple(parse_segments(value))
        except ValueError as exc:
            raise ConfigError(f"{key}: invalid value {value!r}: {exc}") from None
    if isinstance(value, (list, tuple)) and all(
            isinstance(seg, (list, tuple)) and len(seg) == len(Segment._fields) for seg in value):
        return tuple(Segment(*(_coerce(f"{key}[{i}]", x, float, text=text) for x in seg))
                     for i, seg in enumerate(value))
    raise ConfigError(f"{key}: invalid value {value!r}; allowed: a list of [fraction, tau_start, "
                      "tau_end, lambda_start, lambda_end]"
                      + (", or text 'F:T0,T1,L0,L1;F:...'" if text else ""))


def dataclass_from_dict(cls: type[T], raw: Any, *, source: str, where: str = "",
                        base: T | None = None, extra: Mapping[str, Any] | None = None) -> T:
    """Build dataclass `cls` from a mapping read from YAML or a checkpoint: each key one field, a
    nested dataclass from a nested mapping, each value coerced to its field's declared type.

    Fields left out keep `base`'s values (copied), else their defaults; `extra` sets the fields
    that are not keys of the mapping (where the mapping was read from, say). An unknown key (named
    with the file and the allowed keys), a missing required key or a bad value is one ConfigError
    line that starts with `source`.
    """
    extra = dict(extra or {})
    if not isinstance(raw, Mapping):
        got = f"{where}: expected a mapping, got {raw!r}" if where else (
            f"expected a mapping at the top level, got {type(raw).__name__}")
        raise ConfigError(f"{source}: {got}")
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in extra}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {dotted!r}; allowed"
                              + (f" in {where}: " if where else ": ") + ", ".join(sorted(fields)))
        if dataclasses.is_dataclass(hints[key]) and not isinstance(value, hints[key]):
            values[key] = dataclass_from_dict(hints[key], value, source=source, where=dotted,
                                              base=None if base is None else getattr(base, key))
            continue
        try:
            values[key] = _coerce(dotted, value, hints[key])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    for name, f in fields.items():
        if name in values:
            continue
        if base is not None and dataclasses.is_dataclass(hints[name]):  # a copy, not base's own
            values[name] = dataclass_from_dict(hints[name], {}, source=source,
                                               base=getattr(base, name))
        elif (base is None and f.default is dataclasses.MISSING
              and f.default_factory is dataclasses.MISSING):
            missing = f"{where}.{name}" if where else name
            raise ConfigError(f"{source}: missing key {missing!r}")
    if base is not None:
        return dataclasses.replace(base, **values, **extra)
    return cls(**values, **extra)


def from_dict(raw: dict[str, Any], *, base: RunConfig | None = None, source: str = "config",
              ) -> RunConfig:
    """Build a RunConfig from a nested dict; missing keys keep `base`'s values, unknown keys fail."""
    return dataclass_from_dict(RunConfig, raw, source=source, base=base)


def _deep_copy(cfg: RunConfig) -> RunConfig:
    return RunConfig(**{f.name: dataclasses.replace(getattr(cfg, f.name))
                        if dataclasses.is_dataclass(getattr(cfg, f.name)) else getattr(cfg, f.name)
                        for f in dataclasses.fields(RunConfig)})


def dump_yaml(cfg: RunConfig, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def read_yaml_file(path: str | Path, flag: str) -> Any:
    """yaml.safe_load a user's file; a missing file or bad syntax is one ConfigError line."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag}: {str(p)!r} is a directory; allowed: a YAML file")
    if not p.is_file():
        raise ConfigError(f"{flag}: file {str(p)!r} does not exist")
    try:
        return yaml.safe_load(p.read_text())
    except UnicodeDecodeError:  # a binary file, e.g. a checkpoint passed as --config
        raise ConfigError(f"{flag}: {str(p)!r} is not a text YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{flag}: {str(p)!r} is not valid YAML{where}") from None


def load_yaml(path: str | Path, *, base: RunConfig | None = None) -> RunConfig:
    raw = read_yaml_file(path, "--config")
    return validate(from_dict(raw or {}, base=base, source=str(path)))


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value), the value parsed as a YAML scalar (1e-3, true, null)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set: {item!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def attack_line(cfg: RunConfig) -> str:
    """The attack budget a run trains and validates with, in one line (printed at every start:
    eps is the field a user of a new dataset most needs to see)."""
    def px(x: float) -> str:
        k = x * 255
        return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) else f"{x:g}"

    a = cfg.attack
    return (f"attack: Linf eps {px(a.eps)} ({a.eps:.4g}), PGD-{a.steps} step {px(a.alpha)} in "
            f"training, PGD-{a.eval_steps} in validation, on {cfg.data.dataset}")


def _annotation(dotted: str, source: str) -> Any:
    """The declared type of a dotted field ('adr.tau_start', 'seed'); an unknown one is one line."""
    top = field_types(RunConfig)
    if dotted == "seed":
        return top["seed"]
    section, _, key = dotted.partition(".")
    if section in top and not dataclasses.is_dataclass(top[section]) or not key or "." in key:
        raise ConfigError(f"{source}: unknown key {dotted!r}; use section.key, e.g. "
                          "adr.tau_start=1.5")
    if section not in top:
        raise ConfigError(f"{source}: unknown key {section!r}; allowed: " + ", ".join(sorted(top)))
    hints = field_types(top[section])
    if key not in hints:
        raise ConfigError(f"{source}: unknown key {dotted!r}; allowed in {section}: "
                          + ", ".join(sorted(hints)))
    return hints[key]


def parse_value(dotted: str, value: Any, *, source: str = "--set") -> Any:
    """A value read from YAML or `--set` text (parse_override) -> the field's type."""
    return _coerce(dotted, value, _annotation(dotted, source))


def with_values(cfg: RunConfig, values: Mapping[str, Any], *, source: str = "values",
                ) -> RunConfig:
    """A new config: `cfg` with dotted fields set to typed values ({"adr.tau_start": 2.3}).

    Each value is checked against its field's type without any text parsing (an int for a float
    is widened; a string for a number is refused, in one line); the result is validated once.
    """
    new = _deep_copy(cfg)
    for dotted, value in values.items():
        typed = _coerce(dotted, value, _annotation(dotted, source), text=False)
        section, _, key = dotted.partition(".")
        if key:
            setattr(getattr(new, section), key, typed)
        else:
            setattr(new, section, typed)
    return validate(new)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `a.b=value` strings; values are parsed as YAML scalars (1e-3, true, null, cifar10),
    converted to their fields' types, then set through with_values."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        values[key] = parse_value(key, value)
    return with_values(cfg, values, source="--set")
