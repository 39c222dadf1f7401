"""Search spaces over ADR's annealing ranges (and any other config field), read from YAML.

The paper leaves the tau / lambda ranges per dataset open (Appendix H); a search space names a base
preset, the fields to search with their distributions, the paper's setting as a warm start, the
objective, the sampler, the scheduler and the per-trial budget. Orderings such as
tau_end <= tau_start hold by construction: a parameter declared `above: adr.tau_end` samples the
non-negative gap and adds it to that field.

No Ray here: `adr_scale.tune` runs the search; this module parses, validates and materialises.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adr_scale.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    get_preset,
    parse_value,
    read_yaml_file,
    with_values,
)
from adr_scale.config.io import _field_types

DISTRIBUTIONS = ("categorical", "int", "loguniform", "uniform")
OBJECTIVES = ("pareto", "robust")
SAMPLERS = ("random", "tpe")
SCHEDULERS = ("asha", "halving", "none", "pbt")
TOP_KEYS = ("base", "budget", "confirm", "fixed", "long_run", "max_concurrent", "name", "note",
            "num_samples", "objective", "params", "pbt", "references", "sampler", "scheduler",
            "search", "warm_start")
LAMBDAS = ("adr.lambda_start", "adr.lambda_end")  # both 0: the rectified label is one-hot (AT)
# Fields whose value may not exceed 1: an `above` gap is capped so the sum stays in range.
TPE_STARTUP = 10  # Optuna's TPESampler default n_startup_trials: its random start-up
FIELD_MAX = {"adr.lambda_start": 1.0, "adr.lambda_end": 1.0, "data.synthetic_fraction": 0.999,
             "adr.ema_decay": 0.9999}

METRIC = "val_robust_acc"
CLEAN_METRIC = "val_clean_acc"


@dataclass(frozen=True)
class Param:
    field: str  # dotted config field, e.g. adr.tau_start
    distribution: str
    low: float | None = None
    high: float | None = None
    step: int | None = None
    choices: tuple[Any, ...] = ()
    above: str | None = None  # sample a gap >= 0 and add it to this field's value

    @property
    def name(self) -> str:
        """Optuna's parameter name: the field, or 'field - base' for a sampled gap."""
        return f"{self.field} - {self.above}" if self.above else self.field


@dataclass(frozen=True)
class SearchSpace:
    name: str
    base: str
    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)  # in every trial and in best.yaml (typed)
    search: dict[str, Any] = field(default_factory=dict)  # search fidelity only (typed)
    long_run: dict[str, Any] = field(default_factory=dict)  # best.yaml only (typed)
    warm_start: dict[str, Any] = field(default_factory=dict)  # field -> value (the paper's)
    objective: str = "robust"
    sampler: str = "tpe"
    seed: int = 0
    scheduler: str = "asha"
    grace_period: int = 1  # ASHA / halving: epochs before the first cut
    reduction_factor: int = 2  # ASHA / halving: keep the top 1/rf at each rung
    perturbation_interval: int = 2  # PBT: epochs between exploit / explore
    quantile_fraction: float = 0.25  # PBT: the bottom fraction copies the top fraction
    synch: bool = False  # PBT: rank the population only when every trial has reached the epoch
    epochs: int = 10  # per-trial budget at search fidelity (train.epochs during the search)
    num_samples: int = 8
    max_concurrent: int = 2
    references: bool = True  # run the paper's schedule (warm_start) and plain AT in the search
    confirm_top_k: int = 3  # schedules retrained at full length after the search (0: none)
    confirm_mode: str = "race"  # race: seeds where the answer is open; grid: every seed each
    confirm_seeds: int = 4  # grid: seeds of every candidate; race: the most any candidate runs
    confirm_min_seeds: int = 2  # race: seeds every candidate runs before any stops
    confirm_alpha: float = 0.05  # race: one-sided paired t level at which a candidate stops
    confirm_concurrent: int | None = None  # full-length runs at once (None: max_concurrent)
    note: str = ""  # one line the command prints last (what the setting was built to show)
    source: str = "<space>"

    # -- materialising configs ------------------------------------------------------------

    def field_values(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna parameter values -> config field values (gaps added to their bases)."""
        values: dict[str, Any] = {}
        for p in _dependency_order(self.params):
            raw = params[p.name]
            value = values[p.above] + raw if p.above else raw
            values[p.field] = min(value, FIELD_MAX[p.field]) if p.field in FIELD_MAX else value
        return values

    def trial_config(self, params: dict[str, Any]) -> RunConfig:
        """The config one trial trains: base, fixed, search fidelity, then the sampled fields (later
        ones win), set as typed values and validated once."""
        values = (self.fixed | self.search | {"train.epochs": self.epochs}
                  | self.field_values(params))
        return with_values(self._base(), values, source=self.source)

    def long_run_config(self, params: dict[str, Any], seed: int | None = None) -> RunConfig:
        """best.yaml: the same fields at full length (the base preset's epochs unless long_run
        says); `seed`: a confirmation run's."""
        values = self.fixed | self.long_run | self.field_values(params)
        return with_values(self._base(), values | ({} if seed is None else {"seed": seed}),
                           source=self.source)

    def _base(self) -> RunConfig:
        """The base preset unvalidated: with_values validates the whole config once (the preset
        alone was checked when the space was read)."""
        return PRESETS[self.base]()

    def warm_start_params(self) -> dict[str, Any]:
        """The warm-start point in Optuna's parameter names (gaps computed from the fields)."""
        if not self.warm_start:
            return {}
        return {p.name: (self.warm_start[p.field] - self.warm_start[p.above]) if p.above
                else self.warm_start[p.field] for p in self.params}

    def reference_points(self) -> dict[str, dict[str, Any]]:
        """{"paper": the warm start, "AT": lambda 0 -> 0} in Optuna's parameter names, each run
        in every search at the search budget (so it can never do worse than AT by construction).
        AT keeps the warm start's (or the low end's) other values: with lambda 0 they do not
        change the label, and Eq. 4 gives lambda_i = 0, the one-hot target."""
        if not self.references:
            return {}
        points = {}
        if self.warm_start:
            points["paper"] = self.warm_start_params()
        base = self.warm_start_params() or {p.name: _extremes(p)[0] for p in self.params}
        at = dict(base)
        for p in self.params:
            if p.field in LAMBDAS:
                at[p.name] = 0.0
        points["AT"] = at
        return points

    def reference_of(self, fields: dict[str, Any]) -> str | None:
        """Which reference point these field values are ("paper", "AT") or None."""
        for name, params in self.reference_points().items():
            ref = self.field_values(params)
            if ref and all(k in fields and _same(fields[k], v) for k, v in ref.items()):
                return name
        return None

    def reference_of_params(self, params: dict[str, Any]) -> str | None:
        """Which reference point these Optuna parameter values are, or None (also where one is
        missing)."""
        if not all(p.name in params for p in self.params):
            return None
        return self.reference_of(self.field_values(params))

    def confirm_seed_list(self, base_seed: int) -> list[int]:
        return [base_seed + i for i in range(self.confirm_seeds)]

    # -- the define-by-run space -----------------------------------------------------------

    def suggest(self, trial) -> None:
        """Draw every parameter from an Optuna trial (bases before the gaps that need them)."""
        values: dict[str, float] = {}
        for p in _dependency_order(self.params):
            if p.distribution == "categorical":
                values[p.field] = trial.suggest_categorical(p.name, list(p.choices))
                continue
            low, high = p.low, _high(p, values)
            if p.distribution == "int":
                raw = trial.suggest_int(p.name, int(low), int(high), step=p.step or 1)
            else:
                raw = trial.suggest_float(p.name, low, high, log=p.distribution == "loguniform")
            values[p.field] = values[p.above] + raw if p.above else raw


    def example_config(self) -> RunConfig:
        """One trial's config, at the warm start or else every parameter's low end (choices: the
        first): what a check of the fields every trial shares reads (dataset, batch, attack)."""
        low = {p.name: p.choices[0] if p.distribution == "categorical" else p.low
               for p in self.params}
        return self.trial_config(self.warm_start_params() or low)

    def startup_count(self, num_samples: int) -> int:
        """Searched points that are Sobol start-up points: those TPE would draw at random (its
        first TPE_STARTUP), none under the random sampler or PBT."""
        if self.sampler != "tpe" or self.scheduler == "pbt":
            return 0
        return max(0, min(num_samples - len(self.reference_points()), TPE_STARTUP))

    def startup_seed(self) -> int:
        """The Sobol scramble's seed, from the sampler seed, the space and the dataset it trains
        on, so two datasets (or spaces) do not get the same start-up points."""
        import hashlib

        data = self.example_config().data
        key = f"{self.seed}|{self.name}|{data.dataset}|{data.root}"
        return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)

    def startup_points(self, n: int, seed: int) -> list[dict[str, Any]]:
        """`n` points of a scrambled Sobol sequence (seed `seed`) over the space, in Optuna's
        parameter names: a small search's start-up points cover the space evenly instead of
        being random draws (TPE's start-up)."""
        if n <= 0 or not self.params:
            return []
        import warnings

        from scipy.stats import qmc

        with warnings.catch_warnings():  # a prefix of a 2^m sequence: balance is not needed
            warnings.simplefilter("ignore")
            unit = qmc.Sobol(d=len(self.params), scramble=True, seed=seed).random_base2(
                max(0, math.ceil(math.log2(n))))[:n]
        return [self._from_unit(dict(zip([p.name for p in self.params], u, strict=True)))
                for u in unit]

    def _from_unit(self, coords: dict[str, float]) -> dict[str, Any]:
        """A point of the unit cube -> parameter values, as `suggest` would draw them (gaps capped
        by their base's value)."""
        values: dict[str, Any] = {}
        out: dict[str, Any] = {}
        for p in _dependency_order(self.params):
            x = min(float(coords[p.name]), 1 - 1e-12)
            if p.distribution == "categorical":
                raw = p.choices[int(x * len(p.choices))]
            elif p.distribution == "int":
                step = p.step or 1
                raw = int(p.low) + step * int(x * ((int(_high(p, values)) - int(p.low)) // step + 1))
            elif p.distribution == "loguniform":
                raw = math.exp(math.log(p.low) + x * (math.log(_high(p, values)) - math.log(p.low)))
            else:
                raw = p.low + x * (_high(p, values) - p.low)
            out[p.name] = raw
            values[p.field] = values[p.above] + raw if p.above else raw
        return out


def _high(p: Param, values: dict[str, Any]) -> float:
    """The upper end of `p` given the fields drawn so far: a gap keeps base + gap within its
    field's range."""
    if p.above and p.field in FIELD_MAX:
        return max(p.low, min(p.high, FIELD_MAX[p.field] - values[p.above]))
    return p.high


class DefineByRun:
    """A picklable define-by-run space for OptunaSearch (Ray pickles it; lambdas would fail)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial) -> None:
        self.space.suggest(trial)


# -- parsing and validation -----------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9
    return a == b


def _dependency_order(params: tuple[Param, ...]) -> list[Param]:
    placed: dict[str, Param] = {}
    pending = list(params)
    while pending:
        ready = [p for p in pending if p.above is None or p.above in placed]
        assert ready, "validated spaces have no cycles"
        for p in ready:
            placed[p.field] = p
            pending.remove(p)
    return list(placed.values())


def _is_config_field(dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    hints = _field_types(RunConfig)
    if section not in hints or not key:
        return False
    return key in _field_types(hints[section])


def _fail(source: str, message: str) -> None:
    raise ConfigError(f"{source}: {message}")


def _parse_param(source: str, dotted: str, spec: Any) -> Param:
    where = f"params.{dotted}"
    if not _is_config_field(dotted):
        _fail(source, f"{where}: {dotted!r} is not a config field (e.g. adr.tau_start)")
    if not isinstance(spec, dict):
        _fail(source, f"{where}: expected a mapping with 'distribution', got {spec!r}")
    unknown = set(spec) - {"distribution", "low", "high", "step", "choices", "above"}
    if unknown:
        _fail(source, f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: above, choices, "
                      "distribution, high, low, step")
    dist = spec.get("distribution")
    if dist not in DISTRIBUTIONS:
        _fail(source, f"{where}.distribution: unknown distribution {dist!r}; allowed: "
                      + ", ".join(DISTRIBUTIONS))
    if dist == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            _fail(source, f"{where}.choices: a non-empty list is required for categorical")
        if spec.get("above"):
            _fail(source, f"{where}.above: not allowed for a categorical parameter")
        try:  # typed once here: a trial sets them without parsing
            typed = tuple(parse_value(dotted, c, source=f"{source}: {where}") for c in choices)
        except ConfigError as exc:
            _fail(source, f"{where}.choices: {exc}")
        return Param(field=dotted, distribution=dist, choices=typed)
    low, high = spec.get("low"), spec.get("high")
    for key, value in (("low", low), ("high", high)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            _fail(source, f"{where}.{key}: invalid value {value!r}; allowed: a finite number")
    if low > high:
        _fail(source, f"{where}: inverted bounds low={low} > high={high}")
    if dist == "loguniform" and low <= 0:
        _fail(source, f"{where}.low: {low} must be > 0 for a loguniform distribution")
    above = spec.get("above")
    if above is not None and low < 0:
        _fail(source, f"{where}.low: {low}; the gap above {above} must be >= 0")
    step = spec.get("step")
    if step is not None and (dist != "int" or not isinstance(step, int) or step < 1):
        _fail(source, f"{where}.step: {step!r}; allowed: an integer >= 1 for int distributions")
    return Param(field=dotted, distribution=dist, low=float(low), high=float(high), step=step,
                 above=above)


def _parse_overrides(source: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(source, f"{key}: expected a mapping of config fields, got {value!r}")
    out = {}
    for dotted, raw in value.items():
        if not _is_config_field(dotted):
            _fail(source, f"{key}.{dotted}: {dotted!r} is not a config field")
        try:
            out[dotted] = parse_value(dotted, raw, source=f"{source}: {key}")
        except ConfigError as exc:
            _fail(source, f"{key}: {exc}")
    return out


def _positive_int(source: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(source, f"{key}: invalid value {value!r}; allowed: an integer >= 1")
    return value


def _note(source: str, value: Any) -> str:
    if not isinstance(value, str) or "\n" in value.strip():
        _fail(source, f"note: invalid value {value!r}; allowed: one line of text")
    return value.strip()


def _boolean(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(source, f"{key}: invalid value {value!r}; allowed: true, false")
    return value


CONFIRM_KEYS = ("mode", "top_k", "seeds", "min_seeds", "alpha", "max_concurrent")
CONFIRM_MODES = ("race", "grid")


def _parse_confirm(source: str, value: Any) -> dict[str, Any]:
    """confirm: {mode: race | grid, top_k: K, seeds: S, min_seeds: M, alpha: A,
    max_concurrent: C}; top_k 0 skips the confirmation. Under `grid` every candidate runs S
    seeds (default 3); under `race` (the default) M (default 2) to S (default 4)."""
    value = {} if value is None else value
    if not isinstance(value, dict) or set(value) - set(CONFIRM_KEYS):
        _fail(source, f"confirm: expected a mapping of {', '.join(CONFIRM_KEYS)}, got {value!r}")
    top_k = value.get("top_k", 3)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        _fail(source, f"confirm.top_k: invalid value {top_k!r}; allowed: an integer >= 0")
    mode = value.get("mode", "race")
    if mode not in CONFIRM_MODES:
        _fail(source, f"confirm.mode: invalid value {mode!r}; allowed: {', '.join(CONFIRM_MODES)}")
    seeds = _positive_int(source, "confirm.seeds", value.get("seeds", 4 if mode == "race" else 3))
    min_seeds = _positive_int(source, "confirm.min_seeds", value.get("min_seeds", min(2, seeds)))
    if mode == "race" and not 2 <= min_seeds <= seeds:
        _fail(source, f"confirm.min_seeds: invalid value {min_seeds}; allowed: 2 to confirm.seeds "
              f"({seeds}): a paired test needs two seeds")
    alpha = value.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        _fail(source, f"confirm.alpha: invalid value {alpha!r}; allowed: a number in (0, 1)")
    concurrent = value.get("max_concurrent")
    return {"confirm_top_k": top_k, "confirm_mode": mode, "confirm_seeds": seeds,
            "confirm_min_seeds": min_seeds, "confirm_alpha": float(alpha),
            "confirm_concurrent": None if concurrent is None else _positive_int(
                source, "confirm.max_concurrent", concurrent)}


def _fraction(source: str, key: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 0.5:
        _fail(source, f"{key}: invalid value {value!r}; allowed: a number in (0, 0.5]")
    return float(value)


def parse_space(raw: Any, source: str = "<space>") -> SearchSpace:
    """Validate a YAML mapping; every problem is one ConfigError line naming the key."""
    if not isinstance(raw, dict):
        _fail(source, "expected a mapping at the top level")
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        _fail(source, f"unknown key {sorted(unknown)[0]!r}; allowed: " + ", ".join(TOP_KEYS))
    for key in ("name", "base", "params"):
        if key not in raw:
            _fail(source, f"missing key {key!r}")
    name = raw["name"]
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        _fail(source, f"name: invalid value {name!r}; allowed: letters, digits, '-' and '_'")
    try:
        get_preset(raw["base"])
    except ConfigError:
        _fail(source, f"base: unknown preset {raw['base']!r}; see "
                      "`python -m adr_scale.train --list-presets`")
    if not isinstance(raw["params"], dict) or not raw["params"]:
        _fail(source, "params: expected a non-empty mapping of config fields")
    params = tuple(_parse_param(source, k, v) for k, v in raw["params"].items())
    fields = {p.field for p in params}
    for p in params:
        if p.above is not None and p.above not in fields:
            _fail(source, f"params.{p.field}.above: {p.above!r} is not a searched parameter")
    try:
        _dependency_order(tuple(p for p in params))
    except AssertionError:
        _fail(source, "params: the 'above' references form a cycle")
    sampler = raw.get("sampler", {"type": "tpe", "seed": 0})
    if isinstance(sampler, str):
        sampler = {"type": sampler}
    if not isinstance(sampler, dict) or sampler.get("type") not in SAMPLERS:
        _fail(source, f"sampler.type: unknown sampler {sampler!r}; allowed: " + ", ".join(SAMPLERS))
    scheduler = raw.get("scheduler", {"type": "asha"})
    if isinstance(scheduler, str):
        scheduler = {"type": scheduler}
    if not isinstance(scheduler, dict) or scheduler.get("type") not in SCHEDULERS:
        _fail(source, f"scheduler.type: unknown scheduler {scheduler!r}; allowed: "
                      + ", ".join(SCHEDULERS))
    allowed = {"asha": {"type", "grace_period", "reduction_factor"},
               "halving": {"type", "grace_period", "reduction_factor"},
               "pbt": {"type", "perturbation_interval", "quantile_fraction", "synch"},
               "none": {"type"}}[scheduler["type"]]
    extra = set(scheduler) - allowed
    if extra:
        _fail(source, f"scheduler.{sorted(extra)[0]}: not a setting of the "
                      f"{scheduler['type']} scheduler; allowed: " + ", ".join(sorted(allowed)))
    objective = raw.get("objective", "robust")
    if objective not in OBJECTIVES:
        _fail(source, f"objective: unknown objective {objective!r}; allowed: "
                      + ", ".join(OBJECTIVES))
    if objective == "pareto" and scheduler["type"] == "pbt":
        _fail(source, "scheduler.type: pbt needs a single objective; use objective: robust")
    budget = raw.get("budget", {})
    if not isinstance(budget, dict) or set(budget) - {"epochs"}:
        _fail(source, f"budget: expected {{epochs: N}}, got {budget!r}")
    warm = raw.get("warm_start") or {}
    if not isinstance(warm, dict):
        _fail(source, f"warm_start: expected a mapping of searched fields, got {warm!r}")
    for key in warm:
        if key not in fields:
            _fail(source, f"warm_start.{key}: not a searched parameter")
    if warm and set(warm) != fields:
        missing = sorted(fields - set(warm))[0]
        _fail(source, f"warm_start: missing a value for {missing!r} (give every parameter)")
    space = SearchSpace(
        name=name, base=raw["base"], params=params,
        fixed=_parse_overrides(source, "fixed", raw.get("fixed")),
        search=_parse_overrides(source, "search", raw.get("search")),
        long_run=_parse_overrides(source, "long_run", raw.get("long_run")),
        warm_start=dict(warm), objective=objective, sampler=sampler["type"],
        seed=int(sampler.get("seed", 0)), scheduler=scheduler["type"],
        grace_period=_positive_int(source, "scheduler.grace_period",
                                   scheduler.get("grace_period", 1)),
        reduction_factor=_positive_int(source, "scheduler.reduction_factor",
                                       scheduler.get("reduction_factor", 2)),
        perturbation_interval=_positive_int(source, "scheduler.perturbation_interval",
                                            scheduler.get("perturbation_interval", 2)),
        quantile_fraction=_fraction(source, "scheduler.quantile_fraction",
                                    scheduler.get("quantile_fraction", 0.25)),
        synch=_boolean(source, "scheduler.synch", scheduler.get("synch", False)),
        epochs=_positive_int(source, "budget.epochs", budget.get("epochs", 10)),
        num_samples=_positive_int(source, "num_samples", raw.get("num_samples", 8)),
        max_concurrent=_positive_int(source, "max_concurrent", raw.get("max_concurrent", 2)),
        references=_boolean(source, "references", raw.get("references", True)),
        note=_note(source, raw.get("note", "")),
        **_parse_confirm(source, raw.get("confirm")),
        source=source,
    )
    if space.scheduler in ("asha", "halving") and space.grace_period > space.epochs:
        _fail(source, f"scheduler.grace_period: {space.grace_period} exceeds budget.epochs="
                      f"{space.epochs}")
    if space.scheduler == "halving" and space.reduction_factor < 2:
        _fail(source, f"scheduler.reduction_factor: invalid value {space.reduction_factor}; "
                      "allowed: an integer >= 2 (each rung keeps 1 / reduction_factor)")
    if space.scheduler == "halving" and space.grace_period >= space.epochs:
        _fail(source, f"scheduler.grace_period: {space.grace_period} leaves no rung below "
                      f"budget.epochs={space.epochs}; allowed: an integer < budget.epochs")
    _check_types(space)
    _check_materialises(space)
    return space


def _check_types(space: SearchSpace) -> None:
    """A float distribution on an int field samples 2.37 epochs: fails in a trial, not here."""
    for p in space.params:
        section, _, key = p.field.partition(".")
        hint = _field_types(_field_types(RunConfig)[section])[key]
        kind = str if typing.get_origin(hint) is typing.Literal else next(
            (t for t in (bool, int, float, str) if t is hint or t in typing.get_args(hint)), None)
        allowed = {bool: ("categorical",), str: ("categorical",),
                   int: ("categorical", "int"), float: DISTRIBUTIONS}.get(kind, DISTRIBUTIONS)
        if p.distribution not in allowed:
            _fail(space.source, f"params.{p.field}.distribution: {p.distribution!r} samples "
                                f"non-integers for the {kind.__name__} field {p.field}; "
                                f"allowed: {', '.join(allowed)}")


def _extremes(p: Param) -> list[Any]:
    """Every value a parameter can reach at an end of its range, or every choice."""
    if p.distribution == "categorical":
        return list(p.choices)
    if p.distribution == "int":
        return sorted({int(p.low), int(p.high)})
    return sorted({p.low, p.high})


def _check_materialises(space: SearchSpace) -> None:
    """Build and validate the trial and best.yaml configs at both ends of every range and at every
    choice (the others at their low end), at all the high ends together, and at the warm start,
    so a value that breaks the config fails now, not in trial 17 after Ray has started."""
    low = {p.name: _extremes(p)[0] for p in space.params}
    points = [("the low ends", low)]
    for p in space.params:
        points += [(f"{p.name}={v!r}", low | {p.name: v}) for v in _extremes(p)[1:]]
    points.append(("the high ends", {p.name: _extremes(p)[-1] for p in space.params}))
    if space.warm_start:
        points.append(("warm_start", space.warm_start_params()))
    for where, params in points:
        try:
            space.trial_config(params)
            space.long_run_config(params)
        except ConfigError as exc:
            _fail(space.source, f"the space gives an invalid config: {exc} (at {where})")
    if space.warm_start:
        _check_warm_start(space)
    if space.references:
        _check_at_reachable(space)


def _check_at_reachable(space: SearchSpace) -> None:
    """Plain AT must be a point of the space: both lambdas searched with 0 inside their ranges."""
    searched = {p.field: p for p in space.params}
    for name in LAMBDAS:
        p = searched.get(name)
        if p is None or p.distribution == "categorical" and 0 not in p.choices or (
                p.distribution != "categorical" and not p.low <= 0 <= p.high):
            what = "not searched" if p is None else "cannot reach 0"
            _fail(space.source, f"params.{name}: {what}; allowed: a range holding 0 (lambda 0 is "
                                "plain AT, the search's reference), or references: false")
    params = space.reference_points()["AT"]
    try:
        space.trial_config(params)
    except ConfigError as exc:
        _fail(space.source, f"the AT reference gives an invalid config: {exc}")


def _check_warm_start(space: SearchSpace) -> None:
    """The warm start is a point of the space: Optuna would otherwise run it outside the ranges."""
    for p, value in zip(space.params, space.warm_start_params().values(), strict=True):
        inside = (value in p.choices if p.distribution == "categorical"
                  else isinstance(value, (int, float)) and not isinstance(value, bool)
                  and p.low - 1e-12 <= value <= p.high + 1e-12)
        if not inside:
            what = f"the gap above {p.above} is {value!r}" if p.above else f"{value!r}"
            rng = (", ".join(map(repr, p.choices)) if p.distribution == "categorical"
                   else f"[{p.low:g}, {p.high:g}]")
            _fail(space.source, f"warm_start.{p.field}: {what}, outside the searched range; "
                                f"allowed: {rng}")


def load_space(path: str | Path) -> SearchSpace:
    return parse_space(read_yaml_file(path, "--space"), source=str(path))


def rung_milestones(max_t: int, grace_period: int, reduction_factor: int) -> list[int]:
    """Epochs at which successive halving ranks a rung: grace * rf**k below the budget."""
    milestones, m = [], grace_period
    while m < max_t:
        milestones.append(m)
        m *= reduction_factor
    return milestones


def halving_cost(n: int, max_t: int, grace_period: int, reduction_factor: int,
                 references: int = 0) -> int:
    """Epochs a search of n trials consumes under successive halving: its `references` (never
    stopped) train max_t each, the bracket of the other n - references keeps floor(kept / rf),
    at least one, at each rung."""
    references = min(references, n)
    cost, kept, done = references * max_t, n - references, 0
    if not kept:
        return cost
    for m in rung_milestones(max_t, grace_period, reduction_factor) + [max_t]:
        cost += kept * (m - done)
        kept, done = max(1, kept // reduction_factor), m
    return cost
