"""Typed configuration of a whole run: dataclasses, named presets, YAML and `--set` overrides.

Every setting of the paper's Sec. 5.1 (ResNet-18 / WRN-34-10, AT / TRADES, ADR, AWP, WA on CIFAR-10,
CIFAR-100, TinyImageNet-200) and Sec. 5.4 (PreAct-ResNet-18 / WRN-34-10 with 1M DDPM images) is a
named preset; YAML lives only at the edges (exported configs, run directories).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The built-in names (config imports no torch, so it cannot ask the registries); a test keeps
# them equal to adr_scale.models' registry and adr_scale.data's DATASET_INFO, and an architecture
# registered later with @register_model is added by allow_name, so validation accepts it.
DATASETS = ("cifar10", "cifar100", "digits", "fashion_mnist", "mnist", "stl10", "svhn",
            "tinyimagenet200")
GENERIC_DATASETS = ("imagefolder", "npz", "shards")  # a user's own data (adr_scale.data.generic)
ARCHS = ("preact_resnet18", "preact_resnet18_dm", "resnet18", "tiny", "tiny_nonorm", "tiny_wide",
         "wrn28_10", "wrn34_10", "wrn34_10_dm")
ACTIVATIONS = ("relu", "silu")
_ALLOWED: dict[str, set[str]] = {"data.dataset": set(DATASETS) | set(GENERIC_DATASETS), "model.arch": set(ARCHS),
                                 "model.activation": set(ACTIVATIONS)}


def allow_name(field_name: str, name: str) -> None:
    """Accept `name` for `field_name` (data.dataset, model.arch, model.activation) from now on:
    the registries call this for every name they register."""
    _ALLOWED[field_name].add(name)


def allowed_names(field_name: str) -> list[str]:
    return sorted(_ALLOWED[field_name])
METHODS = ("at", "standard", "trades")
SCHEDULES = ("cyclic", "piecewise")
PRECISIONS = ("bf16", "fp32")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # torch._dynamo.list_backends() + debug ones
TRADES_ATTACKS = ("official", "zhang")


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the field, the value and what is allowed."""


@dataclass(kw_only=True)
class DataConfig:
    dataset: str = "cifar10"  # one of DATASETS (named) or GENERIC_DATASETS (a user's own, docs/data.md)
    root: str = "data"  # directory holding the dataset in its standard on-disk layout
    download: bool = False  # fetch a named dataset through torchvision when missing (needs internet)
    svhn_extra: bool = False  # svhn: add extra_32x32.mat (531,131 images) to the training split
    image_size: int | None = None  # pixels; imagefolder: resize (shorter side) + centre-crop to it;
    #                                None: from the data (resolved when loaded; sizes must agree)
    channels: int | None = None  # 1 or 3; imagefolder: convert to it; None: from the data
    #                              (imagefolder: 3, as torchvision's ImageFolder loader)
    cache_dir: str | None = None  # imagefolder / shards decoded cache; None: <root>/.adr_scale_cache
    #                               (imagefolder), <tmp>/adr-scale-synthetic-<uid> (shards)
    skip_bad_images: bool = False  # generic forms: leave out (and count) unreadable images / shards
    class_names: list[str] | None = None  # generic forms: class index -> name; None: resolved when
    #                                       loaded (sorted folder names; "0".."K-1" for npz / shards)
    mean: list[float] | None = None  # per channel, images in [0, 1]; None: the named dataset's
    #                                  declared values, or computed on a generic training split
    std: list[float] | None = None  # per channel (ddof=0); None: as mean
    val_size: int = 1000  # images carved from the training set for model selection (never the test set)
    train_size: int | None = None  # images trained on, drawn from the rest with split_seed;
    #                                None: all of them (fewer: robust overfitting on digits)
    split_seed: int = 0  # fixes the validation split independently of `seed`, so runs compare
    synthetic: str | None = None  # directory of WebDataset shards (data_pipeline output)
    synthetic_fraction: float = 0.75  # share of every batch drawn from `synthetic`, Sec. 5.4
    skip_bad_shards: bool = False  # skip (and count) unreadable shards instead of stopping
    tar_reader: str = "webdataset"  # parser of the cache build: webdataset (the library's) | fast (ours)
    synthetic_cache: str | None = None  # node-local directory of decoded caches; None: <tmp>/adr-scale-synthetic-<uid>
    synthetic_device: str = "cpu"  # cpu (memory-mapped, one copy per node) | cuda (whole array per GPU)
    crop_padding: int = 4  # random crop after zero padding, pixels; Sec. 5.1
    flip: bool = True  # random horizontal flip; Sec. 5.1


@dataclass(kw_only=True)
class ModelConfig:
    arch: str = "resnet18"  # one of ARCHS
    activation: str = "relu"  # relu | silu (SiLU with synthetic data, Sec. 5.4)
    bn_momentum: float = 0.1  # BatchNorm running statistics (PyTorch's); 0.01 with DDPM data
    #                           (official code, Wang et al.)
    bn_momentum_step0: float | None = None  # first optimizer step only; None: bn_momentum. 1.0 with
    #                                         DDPM data: the statistics start as the first batch's


@dataclass(kw_only=True)
class AttackConfig:
    eps: float = 8 / 255  # Linf radius in [0, 1] pixel units, Sec. 5.1
    alpha: float = 2 / 255  # PGD step size, Sec. 5.1
    steps: int = 10  # PGD steps during training, Sec. 5.1
    eval_steps: int = 10  # PGD steps of the validation attack (PGD-10, Sec. 5.1)


@dataclass(kw_only=True)
class ADRConfig:
    enabled: bool = False  # rectify labels with the EMA teacher, Sec. 4.2
    tau_start: float = 2.5  # softmax temperature at step 0 (CIFAR-10), Sec. 5.1
    tau_end: float = 2.0  # temperature at the last step (CIFAR-10), Sec. 5.1
    lambda_start: float = 0.7  # teacher interpolation at step 0, Sec. 5.1
    lambda_end: float = 0.95  # teacher interpolation at the last step, Sec. 5.1
    ema_decay: float = 0.995  # teacher = EMA of the student (also the WA model), Sec. 5.1
    ema_warmup: bool = False  # decay min(ema_decay, (1 + t) / (10 + t)) at step t (Wang et al. 2023)
    segments: str = ""  # a learned (PBT) schedule replacing the ranges above from each fraction
    #                     of training on: "0:2.5,2.0,0.7,0.95;0.5:2.2,1.8,0.75,0.9" (adr.schedules)


@dataclass(kw_only=True)
class AWPConfig:
    enabled: bool = False  # adversarial weight perturbation, Wu et al. 2020
    gamma: float = 0.005  # relative perturbation radius per layer, Sec. 5.1
    proxy_lr: float = 0.01  # learning rate of the proxy step that finds the perturbation (Wu et al.)
    warmup_epochs: int = 0  # epochs of plain training before AWP starts


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 0.1  # initial (piecewise) or peak (cyclic) learning rate, Sec. 5.1 / 5.4
    schedule: str = "piecewise"  # piecewise: /10 at 50 % and 75 %; cyclic: warm-up then cosine to 0
    warmup_epochs: float = 0.0  # linear warm-up length of the cyclic schedule, epochs (10 in Sec. 5.4)
    momentum: float = 0.9  # SGD Nesterov momentum, Sec. 5.1
    nesterov: bool = True  # Sec. 5.1; the official AWP optimizer has none (AWP presets: false)
    no_decay_norm_bias: bool = False  # no weight decay on BatchNorm scales and shifts (official
    #                                   code, Wang et al., with DDPM data; a linear bias keeps it)
    weight_decay: float = 5e-4  # Sec. 5.1


@dataclass(kw_only=True)
class TrainConfig:
    method: str = "at"  # at (PGD-AT) | trades | standard (no attack; for pseudo-labelling)
    epochs: int = 200  # CIFAR-equivalent epochs, Sec. 5.1
    batch_size: int = 128  # global batch, Sec. 5.1
    max_steps: int | None = None  # optional cap on optimizer steps; schedules span the capped run
    trades_beta: float = 6.0  # TRADES robustness weight, Sec. 5.1
    trades_attack: str = "zhang"  # zhang (Zhang et al. 2019: eval mode, 0.001 N(0,1) start) |
    #                               official (yuyuwu5/ADR: train mode, 0.001 U[0,1) start, one
    #                               clean+adv forward); the TRADES presets use official
    wa: bool = False  # select and report the EMA (weight-averaged) model, "+WA" in Table 2
    precision: str = "fp32"  # fp32 | bf16 (autocast on the run's device)
    channels_last: bool = False  # NHWC memory layout (for GPUs; runs on the CPU too)
    compile: bool = False  # torch.compile the model
    compile_backend: str = "inductor"  # torch.compile backend; aot_eager: the same graphs, no codegen (tests)
    sync_batchnorm: bool = False  # SyncBatchNorm across workers (CUDA only; Ray Train runs)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 50  # steps between progress-bar loss updates (each is one host sync)
    keep_checkpoints: int = 2  # epoch checkpoints kept in checkpoints/ besides best.pt and final.pt
    val_every: int = 1  # epochs between validations; the last epoch and checkpoint epochs validate too
    checkpoint_every: int = 1  # epochs between checkpoints (plus the last, and improved ones for best.pt)
    checkpoint_minutes: float = 0.0  # and at least this long apart, minutes (rank 0's clock); 0: no floor
    checkpoint_upload: str = "async"  # Ray runs: async (rank 0 uploads while training goes on) | sync


@dataclass(kw_only=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    adr: ADRConfig = field(default_factory=ADRConfig)
    awp: AWPConfig = field(default_factory=AWPConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0  # seeds initialisation, data order, augmentation and attacks


# --------------------------------------------------------------------------------------------
# Validation


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}: invalid value {value!r}; allowed: {allowed}")


_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "digits": 8, "tinyimagenet200": 64,  # pixels
               "svhn": 32, "mnist": 28, "fashion_mnist": 28, "stl10": 96}
_CHANNELS = {"cifar10": 3, "cifar100": 3, "digits": 1, "tinyimagenet200": 3, "svhn": 3, "mnist": 1,
             "fashion_mnist": 1, "stl10": 3}


def _data_checks(d: DataConfig) -> list[tuple[str, Any, bool, str]]:
    """The checks of the dataset fields of the generic forms."""
    named_size, named_channels = _IMAGE_SIZE.get(d.dataset), _CHANNELS.get(d.dataset)
    stats_ok = {k: v is None or (len(v) >= 1 and all(isinstance(x, float) for x in v))
                for k, v in (("mean", d.mean), ("std", d.std))}
    return [
        ("data.svhn_extra", d.svhn_extra, not d.svhn_extra or d.dataset == "svhn",
         "false unless data.dataset=svhn"),
        ("data.image_size", d.image_size,
         d.image_size is None or (d.image_size >= 1 and named_size in (None, d.image_size)),
         "null or an integer >= 1" if named_size is None
         else f"null or {named_size} ({d.dataset} is not resized)"),
        ("data.channels", d.channels,
         d.channels is None or (d.channels in (1, 3) and named_channels in (None, d.channels)),
         "null, 1 or 3" if named_channels is None else f"null or {named_channels} ({d.dataset})"),
        ("data.class_names", d.class_names,
         d.class_names is None or (len(d.class_names) >= 1
                                   and len(set(d.class_names)) == len(d.class_names)),
         "null or a list of distinct names"),
        ("data.mean", d.mean, stats_ok["mean"] and all(0.0 <= m <= 1.0 for m in d.mean or []),
         "null or a list of numbers in [0, 1], one per channel"),
        ("data.std", d.std, stats_ok["std"] and all(v > 0.0 for v in d.std or []),
         "null or a list of numbers > 0, one per channel"),
        ("data.std", d.std, (d.mean is None) == (d.std is None)
         and (d.mean is None or len(d.mean) == len(d.std)),
         "null with data.mean null, else a list as long as data.mean"),
    ]


def _padding_limit(d: DataConfig) -> int:
    return _IMAGE_SIZE.get(d.dataset, d.image_size or 64)


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field a user can get wrong; raise ConfigError with one line on the first."""
    d, m, a, r, w, o, t = cfg.data, cfg.model, cfg.attack, cfg.adr, cfg.awp, cfg.optim, cfg.train
    checks: list[tuple[str, Any, bool, str]] = [
        ("data.dataset", d.dataset, d.dataset in _ALLOWED["data.dataset"],
         ", ".join(allowed_names("data.dataset"))),
        ("data.val_size", d.val_size, d.val_size >= 1, "an integer >= 1"),
        ("data.train_size", d.train_size, d.train_size is None or d.train_size >= 1,
         "null (all) or an integer >= 1"),
        ("data.synthetic_fraction", d.synthetic_fraction, 0.0 <= d.synthetic_fraction < 1.0,
         "a number in [0, 1)"),
        ("data.crop_padding", d.crop_padding, 0 <= d.crop_padding <= _padding_limit(d),
         f"an integer in [0, {_padding_limit(d)}] (the image size of {d.dataset})"),
        *_data_checks(d),
        ("data.tar_reader", d.tar_reader, d.tar_reader in ("fast", "webdataset"),
         "fast, webdataset"),
        ("data.synthetic_device", d.synthetic_device, d.synthetic_device in ("cpu", "cuda"),
         "cpu, cuda"),
        ("model.arch", m.arch, m.arch in _ALLOWED["model.arch"], ", ".join(allowed_names("model.arch"))),
        ("model.activation", m.activation, m.activation in _ALLOWED["model.activation"],
         ", ".join(allowed_names("model.activation"))),
        ("model.bn_momentum", m.bn_momentum, 0.0 < m.bn_momentum <= 1.0, "a number in (0, 1]"),
        ("model.bn_momentum_step0", m.bn_momentum_step0,
         m.bn_momentum_step0 is None or 0.0 < m.bn_momentum_step0 <= 1.0,
         "null or a number in (0, 1]"),
        ("attack.eps", a.eps, 0.0 <= a.eps <= 1.0, "a number in [0, 1] (pixel scale)"),
        ("attack.alpha", a.alpha, a.alpha > 0.0, "a number > 0"),
        ("attack.steps", a.steps, a.steps >= 1, "an integer >= 1"),
        ("attack.eval_steps", a.eval_steps, a.eval_steps >= 1, "an integer >= 1"),
        ("adr.tau_start", r.tau_start, r.tau_start > 0.0, "a temperature > 0"),
        ("adr.tau_end", r.tau_end, r.tau_end > 0.0, "a temperature > 0"),
        ("adr.lambda_start", r.lambda_start, 0.0 <= r.lambda_start <= 1.0, "a number in [0, 1]"),
        ("adr.lambda_end", r.lambda_end, 0.0 <= r.lambda_end <= 1.0, "a number in [0, 1]"),
        ("adr.ema_decay", r.ema_decay, 0.0 < r.ema_decay < 1.0, "a number in (0, 1)"),
        ("awp.gamma", w.gamma, w.gamma >= 0.0, "a number >= 0"),
        ("awp.proxy_lr", w.proxy_lr, w.proxy_lr > 0.0, "a number > 0"),
        ("awp.warmup_epochs", w.warmup_epochs, w.warmup_epochs >= 0, "an integer >= 0"),
        ("optim.lr", o.lr, o.lr > 0.0, "a number > 0"),
        ("optim.schedule", o.schedule, o.schedule in SCHEDULES, ", ".join(SCHEDULES)),
        # with train.epochs itself invalid, that (checked below) is the error to report
        ("optim.warmup_epochs", o.warmup_epochs, t.epochs < 1 or 0.0 <= o.warmup_epochs <= t.epochs,
         f"a number in [0, train.epochs={t.epochs}]"),
        ("optim.momentum", o.momentum, 0.0 <= o.momentum < 1.0, "a number in [0, 1)"),
        ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0.0, "a number >= 0"),
        ("train.method", t.method, t.method in METHODS, ", ".join(METHODS)),
        ("train.epochs", t.epochs, t.epochs >= 1, "an integer >= 1"),
        ("train.batch_size", t.batch_size, t.batch_size >= 1, "an integer >= 1"),
        ("train.max_steps", t.max_steps, t.max_steps is None or t.max_steps >= 1,
         "null or an integer >= 1"),
        ("train.trades_beta", t.trades_beta, t.trades_beta >= 0.0, "a number >= 0"),
        ("train.trades_attack", t.trades_attack, t.trades_attack in TRADES_ATTACKS,
         ", ".join(TRADES_ATTACKS)),
        ("train.precision", t.precision, t.precision in PRECISIONS, ", ".join(PRECISIONS)),
        ("train.compile_backend", t.compile_backend, t.compile_backend in COMPILE_BACKENDS,
         ", ".join(COMPILE_BACKENDS)),
        ("seed", cfg.seed, 0 <= cfg.seed < 2**62, "an integer in [0, 2**62)"),  # + rank offsets
        ("data.split_seed", d.split_seed, 0 <= d.split_seed < 2**62, "an integer in [0, 2**62)"),
        ("train.device", t.device, re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
         "auto, cpu, cuda or cuda:N"),
        ("train.log_every", t.log_every, t.log_every >= 1, "an integer >= 1"),
        ("train.val_every", t.val_every, t.val_every >= 1, "an integer >= 1 (epochs)"),
        ("train.checkpoint_every", t.checkpoint_every, t.checkpoint_every >= 1,
         "an integer >= 1 (epochs)"),
        ("train.checkpoint_minutes", t.checkpoint_minutes, t.checkpoint_minutes >= 0,
         "a number of minutes >= 0"),
        ("train.checkpoint_upload", t.checkpoint_upload, t.checkpoint_upload in ("async", "sync"),
         "async, sync"),
        ("train.keep_checkpoints", t.keep_checkpoints, t.keep_checkpoints >= 1,
         "an integer >= 1"),
    ]
    for key, value, ok, allowed in checks:
        if not ok:
            _fail(key, value, allowed)
    if r.tau_end > r.tau_start:
        raise ConfigError(f"adr.tau_end: {r.tau_end} is above adr.tau_start={r.tau_start}; "
                          "the temperature anneals from high to low (Sec. 4.2)")
    if r.lambda_end < r.lambda_start:
        raise ConfigError(f"adr.lambda_end: {r.lambda_end} is below adr.lambda_start="
                          f"{r.lambda_start}; the interpolation rises over training (Sec. 4.2)")
    if r.segments:
        from adr_scale.schedules import parse_segments

        try:
            segments = parse_segments(r.segments)
        except ValueError as exc:
            raise ConfigError(f"adr.segments: invalid value {r.segments!r}: {exc}") from None
        for _, t0, t1, l0, l1 in segments:
            if min(t0, t1) <= 0 or not (0 <= l0 <= 1 and 0 <= l1 <= 1):
                raise ConfigError(f"adr.segments: invalid value {r.segments!r}; temperatures "
                                  "must be > 0 and lambdas in [0, 1]")
    if d.synthetic and t.batch_size >= 1 and round(d.synthetic_fraction * t.batch_size) == 0:
        raise ConfigError(f"data.synthetic_fraction: {d.synthetic_fraction} of train.batch_size "
                          f"{t.batch_size} draws no synthetic image; allowed: a number in (0, 1) "
                          "with data.synthetic set, or data.synthetic=null")
    if t.method == "standard" and (r.enabled or w.enabled):
        raise ConfigError("train.method: 'standard' trains without an attack; "
                          "set adr.enabled=false and awp.enabled=false")
    return cfg


# --------------------------------------------------------------------------------------------
# Conversion between dataclasses, plain dicts and YAML


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a parsed YAML / --set value to the field's declared type, or raise ConfigError."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: invalid value {value!r}; allowed: a list, e.g. [a, b]")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
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
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
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


def from_dict(raw: dict[str, Any], *, base: RunConfig | None = None, source: str = "config",
              ) -> RunConfig:
    """Build a RunConfig from a nested dict; missing keys keep `base`'s values, unknown keys fail."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    cfg = dataclasses.replace(base) if base is not None else RunConfig()
    cfg = _deep_copy(cfg)
    for key, value in raw.items():
        if key == "seed":
            cfg.seed = _coerce("seed", value, int)
            continue
        if key not in _field_types(RunConfig):
            raise ConfigError(f"{source}: unknown key {key!r}; allowed: "
                              + ", ".join(sorted(_field_types(RunConfig))))
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: section {key!r} must be a mapping, got {value!r}")
        section = getattr(cfg, key)
        hints = _field_types(type(section))
        for sub, subvalue in value.items():
            dotted = f"{key}.{sub}"
            if sub not in hints:
                raise ConfigError(f"{source}: unknown key {dotted!r}; allowed in {key}: "
                                  + ", ".join(sorted(hints)))
            setattr(section, sub, _coerce(dotted, subvalue, hints[sub]))
    return cfg


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


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `a.b=value` strings; values are parsed as YAML scalars (1e-3, true, null, cifar10)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        if key == "seed":
            nested["seed"] = value
        elif len(parts) != 2:
            raise ConfigError(f"--set: unknown key {key!r}; use section.key, e.g. adr.tau_start=1.5")
        else:
            nested.setdefault(parts[0], {})[parts[1]] = value
    return validate(from_dict(nested, base=cfg, source="--set"))


# --------------------------------------------------------------------------------------------
# Presets: named functions, each a small edit of a base
#
# A preset reproduces the official configuration of its setting: the gin file of yuyuwu5/ADR
# (OFFICIAL_CODE), whose README ties the paper's tables to those files, and that repository's code
# where a gin file says nothing. Its paper-text variant (what the paper's prose states) is
# PAPER_TEXT[name](); paper_overrides(name) lists the --set flags from the preset to it, and
# docs/presets.md (written by `python -m adr_scale.presets_doc`) tabulates both field by field.

OFFICIAL_CODE = "yuyuwu5/ADR@515da0e"

PRESETS: dict[str, Callable[[], RunConfig]] = {}
PAPER_TEXT: dict[str, Callable[[], RunConfig]] = {}  # preset name -> its paper-text variant
SOURCES: dict[str, str] = {}  # preset name -> the official gin file, or why there is none


def preset(fn: Callable[[], RunConfig] | None = None, *,
           paper: Callable[[], RunConfig] | None = None, source: str = "no official config",
           ) -> Any:
    """Register a preset (`@preset` or `@preset(paper=..., source=...)`); a preset without a
    paper-text builder is its own paper-text variant."""

    def register(f: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
        PRESETS[f.__name__] = f
        PAPER_TEXT[f.__name__] = paper or f
        SOURCES[f.__name__] = source
        # The exact list, derived from the two builders, so the docstring cannot drift.
        f.__doc__ = (f.__doc__ or "").rstrip() + (
            f"\n\nSource: {source}.\nDepartures from the paper text: {_departures(f.__name__)}.")
        return f

    return register(fn) if fn is not None else register


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r}; see --list-presets "
                          f"(e.g. smoke, cifar10_resnet18_at_adr, cifar100_preact_resnet18_ddpm_at_adr)")
    return validate(PRESETS[name]())


def paper_text(name: str) -> RunConfig:
    """The paper-text variant of preset `name`."""
    get_preset(name)  # the same error for an unknown name
    return validate(PAPER_TEXT[name]())


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def paper_overrides(name: str) -> list[str]:
    """`section.key=value` strings (--set flags) that turn preset `name` into its paper-text
    variant: apply_overrides(get_preset(name), paper_overrides(name)) == paper_text(name)."""
    ours, paper = to_dict(get_preset(name)), to_dict(paper_text(name))
    flags = []
    for section, values in paper.items():
        if not isinstance(values, dict):
            if values != ours[section]:
                flags.append(f"{section}={_flag_value(values)}")
            continue
        for key, value in values.items():
            if value != ours[section][key]:
                flags.append(f"{section}.{key}={_flag_value(value)}")
    return flags


def _edit(cfg: RunConfig, edits: dict[str, Any]) -> RunConfig:
    """Set dotted fields ('adr.tau_end': 1.5) on cfg in place; returns cfg."""
    for dotted, value in edits.items():
        section, key = dotted.split(".")
        setattr(getattr(cfg, section), key, value)
    return cfg


# The paper's Sec. 5.1 text per dataset: (epochs, tau_start, tau_end, lambda_start, lambda_end)
_PAPER_ADR = {
    "cifar10": (200, 2.5, 2.0, 0.7, 0.95),
    "cifar100": (200, 1.5, 1.0, 0.7, 0.95),
    "tinyimagenet200": (80, 2.0, 1.5, 0.5, 0.9),
}
_GIN_DIR = {"cifar10": "cifar10", "cifar100": "cifar100", "tinyimagenet200": "tiny-imagenet"}
_GIN_ARCH = {"resnet18": "resnet18", "wrn34_10": "wrn"}

# The bindings of the official gin files (config/<dataset>/<arch>_<pgd|trades>_<sgd|awp>[_adr].gin)
# that differ from the paper's text, keyed by (dataset, arch, method, awp). adr.* entries come
# from the _adr file and apply to ADR presets only; awp.* entries hold for both files. A setting
# absent here has no gin file (WRN-34-10 with TRADES); {} binds exactly the paper's values.
_GIN_DIFFS: dict[tuple[str, str, str, bool], dict[str, Any]] = {
    ("cifar10", "resnet18", "at", False): {},
    ("cifar10", "resnet18", "at", True): {"adr.tau_end": 1.5, "adr.lambda_end": 0.85},
    ("cifar10", "resnet18", "trades", False): {},
    ("cifar10", "resnet18", "trades", True): {"adr.tau_end": 1.5, "adr.lambda_end": 0.85},
    ("cifar10", "wrn34_10", "at", False): {},
    ("cifar10", "wrn34_10", "at", True): {"adr.tau_end": 1.5, "adr.lambda_end": 0.85},
    ("cifar100", "resnet18", "at", False): {},
    ("cifar100", "resnet18", "at", True): {"adr.tau_start": 2.0, "adr.lambda_end": 0.85},
    ("cifar100", "resnet18", "trades", False): {},
    ("cifar100", "resnet18", "trades", True): {},  # the paper's tau / lambda, unlike PGD-AT's
    ("cifar100", "wrn34_10", "at", False): {},
    ("cifar100", "wrn34_10", "at", True): {"adr.tau_start": 2.0, "adr.lambda_end": 0.85},
    # resnet18_pgd_sgd_adr.gin misspells `tmperature_low` (gin refuses to parse it as shipped);
    # its intended values are the paper's.
    ("tinyimagenet200", "resnet18", "at", False): {},
    ("tinyimagenet200", "resnet18", "at", True): {"adr.lambda_start": 0.3, "awp.gamma": 0.001},
    ("tinyimagenet200", "resnet18", "trades", False): {},
    ("tinyimagenet200", "resnet18", "trades", True): {"awp.gamma": 0.001},
    ("tinyimagenet200", "wrn34_10", "at", False): {},
    ("tinyimagenet200", "wrn34_10", "at", True): {"awp.gamma": 0.001},
}


def _official_code(cfg: RunConfig) -> dict[str, Any]:
    """What the official code fixes whatever a gin file binds (paths in yuyuwu5/ADR's src/)."""
    edits: dict[str, Any] = {}
    if cfg.model.arch in ("preact_resnet18", "wrn34_10"):
        # model/preact_resnet.py, model/wideresnet.py: DeepMind's blocks with TF-SAME padding
        edits["model.arch"] = f"{cfg.model.arch}_dm"
    if cfg.train.method == "trades":
        # util/trades_attack.py and advTrainer.py: train mode, 0.001 U[0, 1) start, one forward
        # of the concatenated clean + adversarial batch
        edits["train.trades_attack"] = "official"
    if cfg.awp.enabled:
        # util/optimizer_scheduler.py: the AWP base optimizer is torch SGD without Nesterov
        # (only the plain-SGD builder passes nesterov=True)
        edits["optim.nesterov"] = False
    if cfg.data.synthetic:
        # advTrainer.py with auxiliary data: BN momentum 1.0 for the first step, then 0.01;
        # optimizer_scheduler.group_weight: no weight decay on BatchNorm parameters
        edits |= {"model.bn_momentum": 0.01, "model.bn_momentum_step0": 1.0,
                  "optim.no_decay_norm_bias": True}
    return edits


def paper_base(dataset: str, arch: str) -> RunConfig:
    """The Sec. 5.1 text for a dataset and architecture, ADR off (AT, piecewise LR, batch 128)."""
    epochs, tau0, tau1, lam0, lam1 = _PAPER_ADR[dataset]
    cfg = RunConfig()
    cfg.data.dataset = dataset
    cfg.data.root = f"data/{dataset}"
    cfg.model.arch = arch
    cfg.train.epochs = epochs
    cfg.adr.tau_start, cfg.adr.tau_end = tau0, tau1
    cfg.adr.lambda_start, cfg.adr.lambda_end = lam0, lam1
    return cfg


def _variant(dataset: str, arch: str, method: str, wa: bool, awp: bool, adr: bool) -> RunConfig:
    """The paper-text configuration of one cell of Table 2 (AT) or Table 4 (TRADES)."""
    cfg = paper_base(dataset, arch)
    cfg.train.method = method
    cfg.train.wa = wa
    cfg.awp.enabled = awp
    cfg.adr.enabled = adr
    return cfg


def gin_file(dataset: str, arch: str, method: str, awp: bool, adr: bool) -> str | None:
    """The official gin file of a Table 2 / 4 setting (WA is an evaluation flag there), or None."""
    if (dataset, arch, method, awp) not in _GIN_DIFFS:
        return None
    return (f"config/{_GIN_DIR[dataset]}/{_GIN_ARCH[arch]}_{'pgd' if method == 'at' else method}"
            f"_{'awp' if awp else 'sgd'}{'_adr' if adr else ''}.gin")


def _official_variant(dataset, arch, method, wa, awp, adr) -> RunConfig:
    cfg = _variant(dataset, arch, method, wa, awp, adr)
    diffs = _GIN_DIFFS.get((dataset, arch, method, awp), {})
    _edit(cfg, {k: v for k, v in diffs.items() if adr or not k.startswith("adr.")})
    return _edit(cfg, _official_code(cfg))


def _departures(name: str) -> str:
    """'field=preset value (paper text: value); ...' for every field where the two differ."""
    ours = to_dict(get_preset(name))
    out = []
    for flag in paper_overrides(name):
        dotted, _, paper = flag.partition("=")
        section, _, key = dotted.partition(".")
        value = ours[section][key] if key else ours[section]
        out.append(f"{dotted}={_flag_value(value)} (paper text: {paper})")
    return "; ".join(out) or "none"


def _title(method: str, wa: bool, awp: bool, adr: bool) -> str:
    parts = [method.upper() if method == "trades" else "AT"]
    parts += [label for on, label in ((wa, "WA"), (awp, "AWP"), (adr, "ADR")) if on]
    return " + ".join(parts)


def _register_paper_grid() -> None:
    """{cifar10, cifar100, tinyimagenet200} x {resnet18, wrn34_10} x {at, trades} x WA x AWP x ADR.

    Names read like the paper's tables: cifar100_resnet18_at_wa_awp_adr is "AT + WA + AWP + ADR".
    preset() appends each function's gin file and its departures from the paper text to its docstring.
    """
    for dataset in _PAPER_ADR:
        for arch in ("resnet18", "wrn34_10"):
            for method in ("at", "trades"):
                for wa in (False, True):
                    for awp in (False, True):
                        for adr in (False, True):
                            name = (f"{dataset}_{arch}_{method}" + ("_wa" if wa else "")
                                    + ("_awp" if awp else "") + ("_adr" if adr else ""))
                            setting = (dataset, arch, method, wa, awp, adr)
                            fn = _make(_official_variant, setting)
                            fn.__name__ = fn.__qualname__ = name
                            table = "Table 4 (TRADES)" if method == "trades" else "Table 2"
                            fn.__doc__ = (f"{_title(method, wa, awp, adr)} on {dataset}, {arch}: "
                                          f"paper Sec. 5.1, {table}.")
                            gin = gin_file(dataset, arch, method, awp, adr)
                            source = (f"{OFFICIAL_CODE} {gin}" if gin else "no official config "
                                      "(no gin file; the official code's behaviour applied)")
                            preset(fn, paper=_make(_variant, setting), source=source)
        for arch in ("resnet18", "preact_resnet18"):
            fn = _make_standard(dataset, arch)
            fn.__name__ = fn.__qualname__ = f"{dataset}_{arch}_standard"
            fn.__doc__ = (f"Non-adversarial {arch} on {dataset}: the classifier that pseudo-labels "
                          "generated images (the official code uses released, labelled sets).")
            preset(fn, source="no official config (the project's pseudo-labeller)")


def _make(builder: Callable[..., RunConfig], setting: tuple) -> Callable[[], RunConfig]:
    return lambda: builder(*setting)


def _make_standard(dataset: str, arch: str) -> Callable[[], RunConfig]:
    """Non-adversarial training of the classifier that pseudo-labels generated images."""

    def build() -> RunConfig:
        cfg = paper_base(dataset, arch)
        cfg.train.method = "standard"
        cfg.train.wa = True
        return cfg

    return build


# Sec. 5.4 (Table 3): 1M DDPM images. Beyond what _official_code sets, the official DDPM runs
# differ where no field reaches (docs/presets.md): timm's cosine LR warms up from 1e-6 over 2.5
# of 100 epochs of 195 steps (19,500 steps; here 400 CIFAR-equivalent epochs of ceil(49,000 /
# 1024) = 48 steps, 19,200) and is not shifted by the warm-up; AWP is SAM-style (awp.py).
_DDPM_GIN_DIFFS = {  # config/<dataset>/preact-resnet18_pgd_awp_adr.gin against the paper text
    "cifar10": {"adr.tau_end": 1.5, "adr.lambda_end": 0.85},
    "cifar100": {"adr.tau_start": 3.0, "adr.tau_end": 1.5, "adr.lambda_start": 0.5,
                 "adr.lambda_end": 0.8},
}


def ddpm_paper_text(dataset: str, arch: str, awp: bool) -> RunConfig:
    """Sec. 5.4's text: batch 1024 (75 % synthetic), cyclic LR 0.4 with 10 warm-up epochs, 400
    CIFAR-equivalent epochs, SiLU, WA, ADR with Sec. 5.1's tau / lambda; "AT+ADR" (no AWP) in
    Table 3, AWP only where the name says so."""
    cfg = _variant(dataset, arch, "at", wa=True, awp=awp, adr=True)
    cfg.data.synthetic = f"shards/{dataset}-ddpm"
    cfg.data.synthetic_fraction = 0.75
    cfg.model.activation = "silu"
    cfg.train.epochs = 400
    cfg.train.batch_size = 1024
    cfg.optim.schedule = "cyclic"
    cfg.optim.lr = 0.4
    cfg.optim.warmup_epochs = 10
    return cfg


def ddpm_base(dataset: str, arch: str, awp: bool = False) -> RunConfig:
    """ddpm_paper_text with the official code's DDPM settings: DeepMind's network, BN momentum
    1.0 then 0.01, no weight decay on BN, and (with AWP) SGD without Nesterov."""
    cfg = ddpm_paper_text(dataset, arch, awp)
    return _edit(cfg, _official_code(cfg))


def _ddpm_official(dataset: str) -> RunConfig:
    return _edit(ddpm_base(dataset, "preact_resnet18", awp=True), _DDPM_GIN_DIFFS[dataset])


@preset(paper=lambda: ddpm_paper_text("cifar100", "preact_resnet18", awp=True),
        source=f"{OFFICIAL_CODE} config/cifar100/preact-resnet18_pgd_awp_adr.gin")
def cifar100_preact_resnet18_ddpm_at_awp_adr() -> RunConfig:
    """The official CIFAR-100 DDPM run behind Table 3's PreAct-ResNet-18 row: PGD-AT with AWP
    (0.005) + ADR, tau 3.0 -> 1.5, lambda 0.5 -> 0.8, where the paper's text says "AT+ADR" with
    Sec. 5.1's values."""
    return _ddpm_official("cifar100")


@preset(paper=lambda: ddpm_paper_text("cifar10", "preact_resnet18", awp=True),
        source=f"{OFFICIAL_CODE} config/cifar10/preact-resnet18_pgd_awp_adr.gin")
def cifar10_preact_resnet18_ddpm_at_awp_adr() -> RunConfig:
    """The official CIFAR-10 DDPM run: PGD-AT with AWP (0.005) + ADR, tau 2.5 -> 1.5, lambda
    0.7 -> 0.85 (the paper reports no CIFAR-10 DDPM result)."""
    return _ddpm_official("cifar10")


@preset(paper=lambda: ddpm_paper_text("cifar100", "preact_resnet18", awp=False),
        source="no official config (the official DDPM configs add AWP: *_ddpm_at_awp_adr)")
def cifar100_preact_resnet18_ddpm_at_adr() -> RunConfig:
    """Table 3's "AT+ADR" as the paper states it: AWP-free, Sec. 5.1's tau / lambda, with the
    official code's DDPM settings (network, BatchNorm, weight decay) on top."""
    return ddpm_base("cifar100", "preact_resnet18")


@preset(paper=lambda: ddpm_paper_text("cifar100", "wrn34_10", awp=False),
        source="no official config (the official repository has no WRN DDPM file)")
def cifar100_wrn34_10_ddpm_at_adr() -> RunConfig:
    """Table 3's WRN-34-10 "AT+ADR" row as the paper states it: AWP-free, Sec. 5.1's tau /
    lambda, with the official code's DDPM settings (network, BatchNorm, weight decay) on top."""
    return ddpm_base("cifar100", "wrn34_10")


@preset(paper=lambda: ddpm_paper_text("cifar10", "preact_resnet18", awp=False),
        source="no official config (the official DDPM configs add AWP: *_ddpm_at_awp_adr)")
def cifar10_preact_resnet18_ddpm_at_adr() -> RunConfig:
    """CIFAR-10 counterpart of cifar100_preact_resnet18_ddpm_at_adr: AWP-free, Sec. 5.1's tau /
    lambda, the official code's DDPM settings on top."""
    return ddpm_base("cifar10", "preact_resnet18")


@preset(source="the project's own (no official or paper counterpart)")
def smoke() -> RunConfig:
    """Bundled digits (8x8, one channel), tiny network, AT + ADR; about a minute on 2 CPU cores."""
    cfg = RunConfig()
    cfg.data.dataset = "digits"
    cfg.data.root = ""
    cfg.data.val_size = 300
    cfg.data.crop_padding = 1  # 8x8 images: a 4-pixel shift would cut the digit in half
    cfg.data.flip = False  # a mirrored digit is another symbol
    cfg.model.arch = "tiny"
    cfg.attack.eps = 16 / 255
    cfg.attack.alpha = 4 / 255
    cfg.attack.steps = 5
    cfg.attack.eval_steps = 10
    cfg.adr.enabled = True
    cfg.adr.tau_start, cfg.adr.tau_end = 2.5, 2.0
    cfg.adr.lambda_start, cfg.adr.lambda_end = 0.7, 0.95
    cfg.adr.ema_decay = 0.99  # a few hundred steps in all: 0.995 would leave the teacher near init
    cfg.train.epochs = 15
    cfg.train.batch_size = 64
    cfg.train.log_every = 10
    cfg.optim.schedule = "cyclic"
    cfg.optim.lr = 0.1
    cfg.optim.warmup_epochs = 1
    return cfg


@preset(source="the project's own (no official or paper counterpart)")
def smoke_standard() -> RunConfig:
    """Digits without an attack: the pseudo-labelling classifier of the smoke pipeline."""
    cfg = smoke()
    cfg.train.method = "standard"
    cfg.adr.enabled = False
    cfg.train.wa = True
    return cfg


@preset(source="the project's own (no official or paper counterpart)")
def digits_overfit() -> RunConfig:
    """smoke made to overfit: 300 training digits, no crop, a 4x wider net, eps 48/255, 60 epochs
    of piecewise LR; AT + ADR (paper's CIFAR-10 tau / lambda). Validation PGD-10, seeds 0-2
    (benchmarks/overfit_digits.py, results/overfit_digits.json): AT best 55.8 +- 0.8, final
    52.1 +- 0.7, best - final 3.7 +- 0.9; AT + ADR best 65.1 +- 0.8, final 62.3 +- 1.5, gap
    2.8 +- 0.7; AT's gap is partly epoch noise (3-epoch smoothed: 1.7 +- 0.7, docs/search.md).
    About 1-2.5 min per run on one core."""
    cfg = smoke()
    cfg.data.train_size = 300  # of the 1200 left after val_size=300 (drawn with split_seed)
    cfg.data.crop_padding = 0  # no augmentation: the adversarial training set can be memorised
    cfg.model.arch = "tiny_wide"  # 64 / 128 channels, ~80k weights
    cfg.attack.eps = 48 / 255  # larger eps, more ambiguous adversarial labels (Dong et al. 2022)
    cfg.attack.alpha = 12 / 255
    cfg.train.epochs = 60
    cfg.train.batch_size = 32  # 9 steps per epoch
    cfg.optim.schedule = "piecewise"  # /10 at epochs 30 and 45: the low-LR phase where AT overfits
    cfg.optim.warmup_epochs = 0
    return cfg


# SVHN (Netzer et al. 2011): no ADR paper or official config; the common PGD-AT practice.
def svhn_base() -> RunConfig:
    """PGD-AT on SVHN's 73,257 training digits, ResNet-18, 200 epochs, batch 128, the piecewise
    schedule (/10 at 50 % and 75 %), SGD momentum 0.9, weight decay 5e-4, eps 8/255, alpha
    2/255, PGD-10 (Sec. 5.1's CIFAR protocol, which Rice et al. 2020 apply to SVHN too), with:

    - optim.lr = 0.01: Rice et al. 2020 (robust overfitting, SVHN experiments) train SVHN PGD-AT
      with a 10x smaller learning rate than CIFAR's 0.1, as most later SVHN AT work does.
    - data.flip = false: a mirrored digit is another symbol; random crop (4 px) stays.
    - No eps warm-up: this project has no field for one. Some SVHN recipes ramp eps (or the
      learning rate) over the first epochs; without it, a first epoch whose robust accuracy stays
      at chance is the sign to lower optim.lr further.
    - ADR: CIFAR-10's tau 2.5 -> 2.0, lambda 0.7 -> 0.95 (Sec. 5.1; also 10 classes). The paper
      reports no SVHN values: search_spaces/svhn.yaml searches them.
    - AWP: gamma 0.005 (Wu et al. 2020, as Sec. 5.1) and SGD without Nesterov (the official AWP
      optimizer, as for CIFAR)."""
    cfg = RunConfig()
    cfg.data.dataset = "svhn"
    cfg.data.root = "data/svhn"
    cfg.data.flip = False  # a mirrored digit is another symbol
    cfg.model.arch = "resnet18"
    cfg.optim.lr = 0.01  # Rice et al. 2020, SVHN
    cfg.train.epochs = 200  # Rice et al. 2020 / Sec. 5.1
    cfg.adr.tau_start, cfg.adr.tau_end = 2.5, 2.0  # CIFAR-10's, Sec. 5.1 (no SVHN values published)
    cfg.adr.lambda_start, cfg.adr.lambda_end = 0.7, 0.95
    return cfg


def _svhn_variant(wa: bool, awp: bool, adr: bool) -> RunConfig:
    cfg = svhn_base()
    cfg.train.wa, cfg.awp.enabled, cfg.adr.enabled = wa, awp, adr
    return _edit(cfg, _official_code(cfg))


def _register_svhn() -> None:
    """svhn_resnet18_at[_wa][_awp][_adr]: the CIFAR grid's names for SVHN (svhn_base's recipe)."""
    for wa in (False, True):
        for awp in (False, True):
            for adr in (False, True):
                name = ("svhn_resnet18_at" + ("_wa" if wa else "") + ("_awp" if awp else "")
                        + ("_adr" if adr else ""))
                fn = _make(_svhn_variant, (wa, awp, adr))
                fn.__name__ = fn.__qualname__ = name
                fn.__doc__ = (f"{_title('at', wa, awp, adr)} on SVHN, resnet18: "
                              + (svhn_base.__doc__ or ""))
                preset(fn, source="no official config (the ADR paper has no SVHN run; each "
                       "value's source: adr_scale.config.svhn_base)")


_register_paper_grid()
_register_svhn()
