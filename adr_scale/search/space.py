"""Search spaces over ADR's annealing ranges (and any other config field), read from YAML.

The paper leaves the tau / lambda ranges per dataset open (Appendix H); a search space names a base
preset, the fields to search with their distributions (adr_scale.search.params), the paper's
setting as a warm start, the objective, the sampler, the scheduler, the per-trial budget and the
confirmation. The file is read by the run config's dataclass-from-dict path (unknown keys, types
and choices checked there); the checks here are the space's own.

No Ray here: `adr_scale.tune` runs the search; this module parses, validates and materialises.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adr_scale.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    get_preset,
    parse_value,
    read_yaml_file,
    with_values,
)
from adr_scale.config.io import dataclass_from_dict
from adr_scale.search.params import (
    FIELD_MAX,
    LAMBDAS,
    Param,
    dependency_order,
    extremes,
    high_end,
    is_config_field,
    parse_params,
    same,
)

Objective = Literal["pareto", "robust"]
SamplerType = Literal["random", "tpe"]
SchedulerType = Literal["asha", "halving", "none", "pbt"]
ConfirmMode = Literal["race", "grid"]
SCHEDULER_SETTINGS = {"asha": ("grace_period", "reduction_factor", "type"),
                      "halving": ("grace_period", "reduction_factor", "type"),
                      "pbt": ("perturbation_interval", "quantile_fraction", "synch", "type"),
                      "none": ("type",)}  # the keys of `scheduler` each type reads
TPE_STARTUP = 10  # Optuna's TPESampler default n_startup_trials: its random start-up

METRIC = "val_robust_acc"
CLEAN_METRIC = "val_clean_acc"

Check = tuple[str, Any, bool, str]  # (key, value, ok, what is allowed), as the run config's


@dataclass(kw_only=True, frozen=True)
class Budget:
    epochs: int = 10  # per-trial epochs at search fidelity (train.epochs during the search)

    def checks(self) -> list[Check]:
        return [("budget.epochs", self.epochs, self.epochs >= 1, "an integer >= 1")]


@dataclass(kw_only=True, frozen=True)
class SamplerSpec:
    type: SamplerType = "tpe"  # tpe: Optuna's TPE after Sobol start-up points; random
    seed: int = 0  # the sampler's seed (and, with the space and dataset, the Sobol scramble's)


@dataclass(kw_only=True, frozen=True)
class SchedulerSpec:
    type: SchedulerType = "asha"  # asha | halving (synchronous successive halving) | pbt | none
    grace_period: int = 1  # asha / halving: epochs before the first cut
    reduction_factor: int = 2  # asha / halving: keep the top 1/rf at each rung
    perturbation_interval: int = 2  # pbt: epochs between exploit / explore
    quantile_fraction: float = 0.25  # pbt: the bottom fraction copies the top fraction
    synch: bool = False  # pbt: rank the population only when every trial has reached the epoch

    def checks(self) -> list[Check]:
        return [
            ("scheduler.grace_period", self.grace_period, self.grace_period >= 1,
             "an integer >= 1"),
            ("scheduler.reduction_factor", self.reduction_factor, self.reduction_factor >= 1,
             "an integer >= 1"),
            ("scheduler.perturbation_interval", self.perturbation_interval,
             self.perturbation_interval >= 1, "an integer >= 1"),
            ("scheduler.quantile_fraction", self.quantile_fraction,
             0 < self.quantile_fraction <= 0.5, "a number in (0, 0.5]"),
        ]


@dataclass(kw_only=True, frozen=True)
class ConfirmSpec:
    """The full-length confirmation after the search; top_k 0 skips it."""

    mode: ConfirmMode = "race"  # race: seeds where the answer is open; grid: every seed each
    top_k: int = 3  # searched schedules retrained at full length (0: none)
    seeds: int | None = None  # grid: seeds of every candidate; race: the most any candidate
    #                           runs; None: 4 (race) or 3 (grid), resolved when read
    min_seeds: int | None = None  # race: seeds every candidate runs before any stops; None: 2
    alpha: float = 0.05  # race: one-sided paired t level at which a candidate stops
    max_concurrent: int | None = None  # full-length runs at once (None: the search's)

    def resolved(self) -> ConfirmSpec:
        seeds = self.seeds if self.seeds is not None else 4 if self.mode == "race" else 3
        min_seeds = min(2, seeds) if self.min_seeds is None else self.min_seeds
        return dataclasses.replace(self, seeds=seeds, min_seeds=min_seeds)

    def checks(self) -> list[Check]:
        return [
            ("confirm.top_k", self.top_k, self.top_k >= 0, "an integer >= 0"),
            ("confirm.seeds", self.seeds, self.seeds >= 1, "an integer >= 1"),
            ("confirm.min_seeds", self.min_seeds, self.min_seeds >= 1, "an integer >= 1"),
            ("confirm.min_seeds", self.min_seeds,
             self.mode != "race" or 2 <= self.min_seeds <= self.seeds,
             f"2 to confirm.seeds ({self.seeds}): a paired test needs two seeds"),
            ("confirm.alpha", self.alpha, 0 < self.alpha < 1, "a number in (0, 1)"),
            ("confirm.max_concurrent", self.max_concurrent,
             self.max_concurrent is None or self.max_concurrent >= 1, "an integer >= 1"),
        ]


@dataclass(kw_only=True, frozen=True)
class SearchSpace:
    name: str  # the search's name: its Tune experiment and run names (letters, digits, - and _)
    base: str  # the preset every trial starts from
    params: tuple[Param, ...]  # the searched fields (adr_scale.search.params)
    fixed: dict[str, Any] = field(default_factory=dict)  # in every trial and in best.yaml (typed)
    search: dict[str, Any] = field(default_factory=dict)  # search fidelity only (typed)
    long_run: dict[str, Any] = field(default_factory=dict)  # best.yaml only (typed)
    warm_start: dict[str, Any] = field(default_factory=dict)  # field -> value (the paper's)
    objective: Objective = "robust"  # robust: validation PGD accuracy; pareto: and clean accuracy
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    budget: Budget = field(default_factory=Budget)
    num_samples: int = 8  # trials, the references included
    max_concurrent: int = 2  # trials at once
    references: bool = True  # run the paper's schedule (warm_start) and plain AT in the search
    confirm: ConfirmSpec = field(default_factory=ConfirmSpec)
    note: str = ""  # one line the command prints last (what the setting was built to show)
    source: str = "<space>"  # the file it was read from (not a key of the file)

    # -- materialising configs ------------------------------------------------------------

    def field_values(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna parameter values -> config field values (gaps added to their bases)."""
        values: dict[str, Any] = {}
        for p in dependency_order(self.params):
            raw = params[p.name]
            value = values[p.above] + raw if p.above else raw
            values[p.field] = min(value, FIELD_MAX[p.field]) if p.field in FIELD_MAX else value
        return values

    def trial_config(self, params: dict[str, Any]) -> RunConfig:
        """The config one trial trains: base, fixed, search fidelity, then the sampled fields (later
        ones win), set as typed values and validated once."""
        values = (self.fixed | self.search | {"train.epochs": self.budget.epochs}
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
        base = self.warm_start_params() or {p.name: extremes(p)[0] for p in self.params}
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
            if ref and all(k in fields and same(fields[k], v) for k, v in ref.items()):
                return name
        return None

    def reference_of_params(self, params: dict[str, Any]) -> str | None:
        """Which reference point these Optuna parameter values are, or None (also where one is
        missing)."""
        if not all(p.name in params for p in self.params):
            return None
        return self.reference_of(self.field_values(params))

    def confirm_seed_list(self, base_seed: int) -> list[int]:
        return [base_seed + i for i in range(self.confirm.seeds)]

    # -- the define-by-run space -----------------------------------------------------------

    def suggest(self, trial) -> None:
        """Draw every parameter from an Optuna trial (bases before the gaps that need them)."""
        values: dict[str, float] = {}
        for p in dependency_order(self.params):
            if p.distribution == "categorical":
                values[p.field] = trial.suggest_categorical(p.name, list(p.choices))
                continue
            low, high = p.low, high_end(p, values)
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
        if self.sampler.type != "tpe" or self.scheduler.type == "pbt":
            return 0
        return max(0, min(num_samples - len(self.reference_points()), TPE_STARTUP))

    def startup_seed(self) -> int:
        """The Sobol scramble's seed, from the sampler seed, the space and the dataset it trains
        on, so two datasets (or spaces) do not get the same start-up points."""
        import hashlib

        data = self.example_config().data
        key = f"{self.sampler.seed}|{self.name}|{data.dataset}|{data.root}"
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
        for p in dependency_order(self.params):
            x = min(float(coords[p.name]), 1 - 1e-12)
            if p.distribution == "categorical":
                raw = p.choices[int(x * len(p.choices))]
            elif p.distribution == "int":
                step = p.step or 1
                raw = int(p.low) + step * int(x * ((int(high_end(p, values)) - int(p.low)) // step
                                                   + 1))
            elif p.distribution == "loguniform":
                hi = high_end(p, values)
                raw = math.exp(math.log(p.low) + x * (math.log(hi) - math.log(p.low)))
            else:
                raw = p.low + x * (high_end(p, values) - p.low)
            out[p.name] = raw
            values[p.field] = values[p.above] + raw if p.above else raw
        return out

    def record(self) -> dict[str, Any]:
        """The flat view a resumed search compares (space.json): the keys and values it had
        before the space had nested records, so output directories written then still resume."""
        s, c = self.scheduler, self.confirm
        return {
            "name": self.name, "base": self.base,
            "params": [dataclasses.asdict(p) for p in self.params],
            "fixed": self.fixed, "search": self.search, "long_run": self.long_run,
            "warm_start": self.warm_start, "objective": self.objective,
            "sampler": self.sampler.type, "seed": self.sampler.seed, "scheduler": s.type,
            "grace_period": s.grace_period, "reduction_factor": s.reduction_factor,
            "perturbation_interval": s.perturbation_interval,
            "quantile_fraction": s.quantile_fraction, "synch": s.synch,
            "epochs": self.budget.epochs, "num_samples": self.num_samples,
            "max_concurrent": self.max_concurrent, "references": self.references,
            "confirm_top_k": c.top_k, "confirm_mode": c.mode, "confirm_seeds": c.seeds,
            "confirm_min_seeds": c.min_seeds, "confirm_alpha": c.alpha,
            "confirm_concurrent": c.max_concurrent, "note": self.note}


class DefineByRun:
    """A picklable define-by-run space for OptunaSearch (Ray pickles it; lambdas would fail)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial) -> None:
        self.space.suggest(trial)


# -- parsing and validation -----------------------------------------------------------------


def _fail(source: str, message: str) -> None:
    raise ConfigError(f"{source}: {message}")


def parse_space(raw: Any, source: str = "<space>") -> SearchSpace:
    """Read a YAML mapping through the run config's dataclass-from-dict path, then check what is
    the space's own; every problem is one ConfigError line naming the file and the key."""
    if isinstance(raw, dict):
        raw = _shorthands(source, raw)
        if "params" in raw:
            raw = raw | {"params": parse_params(source, raw["params"])}
    space = dataclass_from_dict(SearchSpace, raw, source=source, extra={"source": source})
    space = dataclasses.replace(space, confirm=space.confirm.resolved(), note=space.note.strip(),
                                **{key: _typed_fields(source, key, getattr(space, key))
                                   for key in ("fixed", "search", "long_run")})
    _check_space(space)
    _check_materialises(space)
    return space


def _shorthands(source: str, raw: dict[str, Any]) -> dict[str, Any]:
    """`sampler: tpe` and `scheduler: asha` for {type: ...}, an empty block for its defaults;
    and only the settings the scheduler's type reads."""
    blocks = ("budget", "confirm", "fixed", "long_run", "sampler", "scheduler", "search",
              "warm_start")
    raw = {k: v for k, v in raw.items() if v is not None or k not in blocks}
    for key in ("sampler", "scheduler"):
        if isinstance(raw.get(key), str):
            raw[key] = {"type": raw[key]}
    scheduler = raw.get("scheduler", {})
    kind = scheduler.get("type", "asha") if isinstance(scheduler, dict) else None
    allowed = SCHEDULER_SETTINGS.get(kind) if isinstance(kind, str) else None
    extra = sorted(set(scheduler) - set(allowed)) if allowed else []
    if extra:
        _fail(source, f"scheduler.{extra[0]}: not a setting of the {kind} scheduler; allowed: "
                      + ", ".join(sorted(allowed)))
    return raw


def _typed_fields(source: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
    """`fixed` / `search` / `long_run`: config fields, each value typed once here."""
    out = {}
    for dotted, raw in value.items():
        if not is_config_field(dotted):
            _fail(source, f"{key}.{dotted}: {dotted!r} is not a config field")
        try:
            out[dotted] = parse_value(dotted, raw, source=f"{source}: {key}")
        except ConfigError as exc:
            _fail(source, f"{key}: {exc}")
    return out


def _check_space(space: SearchSpace) -> None:
    source, name = space.source, space.name
    if not name.replace("-", "").replace("_", "").isalnum():
        _fail(source, f"name: invalid value {name!r}; allowed: letters, digits, '-' and '_'")
    try:
        get_preset(space.base)
    except ConfigError:
        _fail(source, f"base: unknown preset {space.base!r}; see "
                      "`python -m adr_scale.train --list-presets`")
    sched = space.scheduler
    if space.objective == "pareto" and sched.type == "pbt":
        _fail(source, "scheduler.type: pbt needs a single objective; use objective: robust")
    fields = {p.field for p in space.params}
    for key in space.warm_start:
        if key not in fields:
            _fail(source, f"warm_start.{key}: not a searched parameter")
    if space.warm_start and set(space.warm_start) != fields:
        missing = sorted(fields - set(space.warm_start))[0]
        _fail(source, f"warm_start: missing a value for {missing!r} (give every parameter)")
    checks = [
        *space.budget.checks(), *sched.checks(), *space.confirm.checks(),
        ("num_samples", space.num_samples, space.num_samples >= 1, "an integer >= 1"),
        ("max_concurrent", space.max_concurrent, space.max_concurrent >= 1, "an integer >= 1"),
        ("note", space.note, "\n" not in space.note, "one line of text"),
    ]
    for key, value, ok, allowed in checks:
        if not ok:
            _fail(source, f"{key}: invalid value {value!r}; allowed: {allowed}")
    epochs = space.budget.epochs
    if sched.type in ("asha", "halving") and sched.grace_period > epochs:
        _fail(source, f"scheduler.grace_period: {sched.grace_period} exceeds "
                      f"budget.epochs={epochs}")
    if sched.type == "halving" and sched.reduction_factor < 2:
        _fail(source, f"scheduler.reduction_factor: invalid value {sched.reduction_factor}; "
                      "allowed: an integer >= 2 (each rung keeps 1 / reduction_factor)")
    if sched.type == "halving" and sched.grace_period >= epochs:
        _fail(source, f"scheduler.grace_period: {sched.grace_period} leaves no rung below "
                      f"budget.epochs={epochs}; allowed: an integer < budget.epochs")


def _check_materialises(space: SearchSpace) -> None:
    """Build and validate the trial and best.yaml configs at both ends of every range and at every
    choice (the others at their low end), at all the high ends together, and at the warm start,
    so a value that breaks the config fails now, not in trial 17 after Ray has started."""
    low = {p.name: extremes(p)[0] for p in space.params}
    points = [("the low ends", low)]
    for p in space.params:
        points += [(f"{p.name}={v!r}", low | {p.name: v}) for v in extremes(p)[1:]]
    points.append(("the high ends", {p.name: extremes(p)[-1] for p in space.params}))
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
