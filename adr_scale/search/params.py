"""A search space's parameters: one config field each, its distribution, read from the space's
`params` mapping by the run config's dataclass-from-dict path, then checked against the field.

A parameter declared `above: adr.tau_end` samples the non-negative gap and adds it to that field,
so orderings such as tau_end <= tau_start hold by construction.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from adr_scale.config import ConfigError, RunConfig, parse_value
from adr_scale.config.io import dataclass_from_dict
from adr_scale.config.schema import field_types

Distribution = Literal["categorical", "int", "loguniform", "uniform"]
DISTRIBUTIONS = typing.get_args(Distribution)
LAMBDAS = ("adr.lambda_start", "adr.lambda_end")  # both 0: the rectified label is one-hot (AT)
# Fields whose value may not exceed 1: an `above` gap is capped so the sum stays in range.
FIELD_MAX = {"adr.lambda_start": 1.0, "adr.lambda_end": 1.0, "data.synthetic_fraction": 0.999,
             "adr.ema_decay": 0.9999}


@dataclass(kw_only=True, frozen=True)
class Param:
    field: str  # dotted config field, e.g. adr.tau_start (the key in `params`, not a setting)
    distribution: Distribution  # categorical: one of `choices`; int: low..high by `step`
    low: float | None = None  # lower end (int / uniform / loguniform); of the gap with `above`
    high: float | None = None  # upper end
    step: int | None = None  # int only: the grid step; None: 1
    choices: tuple[Any, ...] = ()  # categorical only: the values, typed as the field
    above: str | None = None  # sample a gap >= 0 and add it to this searched field's value

    @property
    def name(self) -> str:
        """Optuna's parameter name: the field, or 'field - base' for a sampled gap."""
        return f"{self.field} - {self.above}" if self.above else self.field


def _fail(source: str, message: str) -> None:
    raise ConfigError(f"{source}: {message}")


def is_config_field(dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    hints = field_types(RunConfig)
    if section not in hints or not key:
        return False
    return key in field_types(hints[section])


def parse_params(source: str, raw: Any) -> tuple[Param, ...]:
    """The `params` mapping (config field -> its distribution), each entry read as a Param."""
    if not isinstance(raw, dict) or not raw:
        _fail(source, "params: expected a non-empty mapping of config fields")
    params = tuple(_parse_param(source, k, v) for k, v in raw.items())
    fields = {p.field for p in params}
    for p in params:
        if p.above is not None and p.above not in fields:
            _fail(source, f"params.{p.field}.above: {p.above!r} is not a searched parameter")
    try:
        dependency_order(params)
    except AssertionError:
        _fail(source, "params: the 'above' references form a cycle")
    _check_types(source, params)
    return params


def _parse_param(source: str, dotted: str, spec: Any) -> Param:
    where = f"params.{dotted}"
    if not is_config_field(dotted):
        _fail(source, f"{where}: {dotted!r} is not a config field (e.g. adr.tau_start)")
    p = dataclass_from_dict(Param, spec, source=source, where=where, extra={"field": dotted})
    if p.distribution == "categorical":
        if not p.choices:
            _fail(source, f"{where}.choices: a non-empty list is required for categorical")
        if p.above:
            _fail(source, f"{where}.above: not allowed for a categorical parameter")
        try:  # typed once here: a trial sets them without parsing
            typed = tuple(parse_value(dotted, c, source=f"{source}: {where}") for c in p.choices)
        except ConfigError as exc:
            _fail(source, f"{where}.choices: {exc}")
        return Param(field=dotted, distribution=p.distribution, choices=typed)
    for key, value in (("low", p.low), ("high", p.high)):
        if value is None:
            _fail(source, f"{where}.{key}: invalid value None; allowed: a finite number")
    if p.low > p.high:
        _fail(source, f"{where}: inverted bounds low={p.low:g} > high={p.high:g}")
    if p.distribution == "loguniform" and p.low <= 0:
        _fail(source, f"{where}.low: {p.low:g} must be > 0 for a loguniform distribution")
    if p.above is not None and p.low < 0:
        _fail(source, f"{where}.low: {p.low:g}; the gap above {p.above} must be >= 0")
    if p.step is not None and (p.distribution != "int" or p.step < 1):
        _fail(source, f"{where}.step: {p.step!r}; allowed: an integer >= 1 for int distributions")
    return Param(field=dotted, distribution=p.distribution, low=p.low, high=p.high, step=p.step,
                 above=p.above)


def _check_types(source: str, params: tuple[Param, ...]) -> None:
    """A float distribution on an int field samples 2.37 epochs: fails in a trial, not here."""
    for p in params:
        section, _, key = p.field.partition(".")
        hint = field_types(field_types(RunConfig)[section])[key]
        kind = str if typing.get_origin(hint) is Literal else next(
            (t for t in (bool, int, float, str) if t is hint or t in typing.get_args(hint)), None)
        allowed = {bool: ("categorical",), str: ("categorical",),
                   int: ("categorical", "int"), float: DISTRIBUTIONS}.get(kind, DISTRIBUTIONS)
        if p.distribution not in allowed:
            _fail(source, f"params.{p.field}.distribution: {p.distribution!r} samples "
                          f"non-integers for the {kind.__name__} field {p.field}; "
                          f"allowed: {', '.join(allowed)}")


def dependency_order(params: tuple[Param, ...]) -> list[Param]:
    """Bases before the gaps that are sampled above them."""
    placed: dict[str, Param] = {}
    pending = list(params)
    while pending:
        ready = [p for p in pending if p.above is None or p.above in placed]
        assert ready, "validated spaces have no cycles"
        for p in ready:
            placed[p.field] = p
            pending.remove(p)
    return list(placed.values())


def high_end(p: Param, values: dict[str, Any]) -> float:
    """The upper end of `p` given the fields drawn so far: a gap keeps base + gap within its
    field's range."""
    if p.above and p.field in FIELD_MAX:
        return max(p.low, min(p.high, FIELD_MAX[p.field] - values[p.above]))
    return p.high


def extremes(p: Param) -> list[Any]:
    """Every value a parameter can reach at an end of its range, or every choice."""
    if p.distribution == "categorical":
        return list(p.choices)
    if p.distribution == "int":
        return sorted({int(p.low), int(p.high)})
    return sorted({p.low, p.high})


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9
    return a == b
