"""The typed run config: one dataclass per component, nested in `RunConfig`, and its validation.

Choice fields are `Literal` types; the tuples of allowed values (`METHODS`, ...) are read from
them, so the type and the check share one list. Each section's checks sit beside its dataclass
(`checks()`); `validate` runs them and the checks that span sections.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# The built-in names (config imports no torch, so it cannot ask the registries); a test keeps
# them equal to adr_scale.models' registry and adr_scale.data's DATASET_INFO, and an architecture
# registered later with @register_model is added by allow_name, so validation accepts it. These
# fields stay `str` for that reason: their allowed values grow at run time.
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


Method = Literal["at", "standard", "trades"]
Schedule = Literal["cyclic", "piecewise"]
Precision = Literal["bf16", "fp32"]
CompileBackend = Literal["inductor", "aot_eager", "eager"]  # torch._dynamo.list_backends() + debug ones
TradesAttack = Literal["official", "zhang"]
TarReader = Literal["fast", "webdataset"]
SyntheticDevice = Literal["cpu", "cuda"]
CheckpointUpload = Literal["async", "sync"]

METHODS = typing.get_args(Method)
SCHEDULES = typing.get_args(Schedule)
PRECISIONS = typing.get_args(Precision)
COMPILE_BACKENDS = typing.get_args(CompileBackend)
TRADES_ATTACKS = typing.get_args(TradesAttack)


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the field, the value and what is allowed."""


Check = tuple[str, Any, bool, str]  # (dotted field, value, ok, what is allowed)


class Segment(typing.NamedTuple):
    """One piece of a learned (PBT) ADR schedule: from `start` (a fraction of training) on, tau
    and lambda follow the cosine of these ranges over the whole run (adr_scale.schedules), so a
    schedule found at search fidelity replays at any length."""

    start: float  # fraction of training in [0, 1) from which this segment holds
    tau_start: float  # temperatures and interpolations, as ADRConfig's ranges
    tau_end: float
    lambda_start: float
    lambda_end: float


def parse_segments(text: str) -> list[Segment]:
    """'0:2.5,2.0,0.7,0.95;0.5:2.2,1.8,0.7,0.9' -> segments; raises ValueError on bad text."""
    segments = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        start, sep, values = part.partition(":")
        numbers = [float(v) for v in values.split(",")] if sep else []
        if len(numbers) != 4:
            raise ValueError(f"segment {part!r} is not fraction:tau_start,tau_end,"
                             "lambda_start,lambda_end")
        segments.append(Segment(float(start), *numbers))
    fractions = [seg[0] for seg in segments]
    if segments and (fractions[0] != 0.0 or fractions != sorted(set(fractions))
                     or fractions[-1] >= 1.0):
        raise ValueError("segment fractions must start at 0, rise, and stay below 1")
    return segments


def _number(x: float) -> str:
    """Six significant digits where they are exact (the text a config shows), else every digit,
    so that parse_segments(format_segments(s)) == s."""
    short = f"{x:.6g}"
    return short if float(short) == x else repr(float(x))


def format_segments(segments: typing.Iterable[typing.Sequence[float]]) -> str:
    return ";".join(f"{_number(f)}:" + ",".join(_number(v) for v in values)
                    for f, *values in segments)


_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "digits": 8, "tinyimagenet200": 64,  # pixels
               "svhn": 32, "mnist": 28, "fashion_mnist": 28, "stl10": 96}
_CHANNELS = {"cifar10": 3, "cifar100": 3, "digits": 1, "tinyimagenet200": 3, "svhn": 3, "mnist": 1,
             "fashion_mnist": 1, "stl10": 3}


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
    tar_reader: TarReader = "webdataset"  # parser of the cache build: webdataset (the library's) | fast (ours)
    synthetic_cache: str | None = None  # node-local directory of decoded caches; None: <tmp>/adr-scale-synthetic-<uid>
    synthetic_device: SyntheticDevice = "cpu"  # cpu (memory-mapped, one copy per node) | cuda (whole array per GPU)
    crop_padding: int = 4  # random crop after zero padding, pixels; Sec. 5.1
    flip: bool = True  # random horizontal flip; Sec. 5.1

    def padding_limit(self) -> int:
        return _IMAGE_SIZE.get(self.dataset, self.image_size or 64)

    def checks(self) -> list[Check]:
        named_size, named_channels = _IMAGE_SIZE.get(self.dataset), _CHANNELS.get(self.dataset)
        stats_ok = {k: v is None or (len(v) >= 1 and all(isinstance(x, float) for x in v))
                    for k, v in (("mean", self.mean), ("std", self.std))}
        return [
            ("data.dataset", self.dataset, self.dataset in _ALLOWED["data.dataset"],
             ", ".join(allowed_names("data.dataset"))),
            ("data.val_size", self.val_size, self.val_size >= 1, "an integer >= 1"),
            ("data.train_size", self.train_size, self.train_size is None or self.train_size >= 1,
             "null (all) or an integer >= 1"),
            ("data.synthetic_fraction", self.synthetic_fraction,
             0.0 <= self.synthetic_fraction < 1.0, "a number in [0, 1)"),
            ("data.crop_padding", self.crop_padding, 0 <= self.crop_padding <= self.padding_limit(),
             f"an integer in [0, {self.padding_limit()}] (the image size of {self.dataset})"),
            # the fields of the generic forms
            ("data.svhn_extra", self.svhn_extra, not self.svhn_extra or self.dataset == "svhn",
             "false unless data.dataset=svhn"),
            ("data.image_size", self.image_size,
             self.image_size is None or (self.image_size >= 1 and named_size in (None, self.image_size)),
             "null or an integer >= 1" if named_size is None
             else f"null or {named_size} ({self.dataset} is not resized)"),
            ("data.channels", self.channels,
             self.channels is None or (self.channels in (1, 3)
                                       and named_channels in (None, self.channels)),
             "null, 1 or 3" if named_channels is None else f"null or {named_channels} ({self.dataset})"),
            ("data.class_names", self.class_names,
             self.class_names is None or (len(self.class_names) >= 1
                                          and len(set(self.class_names)) == len(self.class_names)),
             "null or a list of distinct names"),
            ("data.mean", self.mean,
             stats_ok["mean"] and all(0.0 <= m <= 1.0 for m in self.mean or []),
             "null or a list of numbers in [0, 1], one per channel"),
            ("data.std", self.std, stats_ok["std"] and all(v > 0.0 for v in self.std or []),
             "null or a list of numbers > 0, one per channel"),
            ("data.std", self.std, (self.mean is None) == (self.std is None)
             and (self.mean is None or len(self.mean) == len(self.std)),
             "null with data.mean null, else a list as long as data.mean"),
            ("data.split_seed", self.split_seed, 0 <= self.split_seed < 2**62,
             "an integer in [0, 2**62)"),
        ]


@dataclass(kw_only=True)
class ModelConfig:
    arch: str = "resnet18"  # one of ARCHS
    activation: str = "relu"  # relu | silu (SiLU with synthetic data, Sec. 5.4)
    bn_momentum: float = 0.1  # BatchNorm running statistics (PyTorch's); 0.01 with DDPM data
    #                           (official code, Wang et al.)
    bn_momentum_step0: float | None = None  # first optimizer step only; None: bn_momentum. 1.0 with
    #                                         DDPM data: the statistics start as the first batch's

    def checks(self) -> list[Check]:
        return [
            ("model.arch", self.arch, self.arch in _ALLOWED["model.arch"],
             ", ".join(allowed_names("model.arch"))),
            ("model.activation", self.activation, self.activation in _ALLOWED["model.activation"],
             ", ".join(allowed_names("model.activation"))),
            ("model.bn_momentum", self.bn_momentum, 0.0 < self.bn_momentum <= 1.0,
             "a number in (0, 1]"),
            ("model.bn_momentum_step0", self.bn_momentum_step0,
             self.bn_momentum_step0 is None or 0.0 < self.bn_momentum_step0 <= 1.0,
             "null or a number in (0, 1]"),
        ]


@dataclass(kw_only=True)
class AttackConfig:
    eps: float = 8 / 255  # Linf radius in [0, 1] pixel units, Sec. 5.1
    alpha: float = 2 / 255  # PGD step size, Sec. 5.1
    steps: int = 10  # PGD steps during training, Sec. 5.1
    eval_steps: int = 10  # PGD steps of the validation attack (PGD-10, Sec. 5.1)

    def checks(self) -> list[Check]:
        return [
            ("attack.eps", self.eps, 0.0 <= self.eps <= 1.0, "a number in [0, 1] (pixel scale)"),
            ("attack.alpha", self.alpha, self.alpha > 0.0, "a number > 0"),
            ("attack.steps", self.steps, self.steps >= 1, "an integer >= 1"),
            ("attack.eval_steps", self.eval_steps, self.eval_steps >= 1, "an integer >= 1"),
        ]


@dataclass(kw_only=True)
class ADRConfig:
    enabled: bool = False  # rectify labels with the EMA teacher, Sec. 4.2
    tau_start: float = 2.5  # softmax temperature at step 0 (CIFAR-10), Sec. 5.1
    tau_end: float = 2.0  # temperature at the last step (CIFAR-10), Sec. 5.1
    lambda_start: float = 0.7  # teacher interpolation at step 0, Sec. 5.1
    lambda_end: float = 0.95  # teacher interpolation at the last step, Sec. 5.1
    ema_decay: float = 0.995  # teacher = EMA of the student (also the WA model), Sec. 5.1
    ema_warmup: bool = False  # decay min(ema_decay, (1 + t) / (10 + t)) at step t (Wang et al. 2023)
    segments: tuple[Segment, ...] = ()  # a learned (PBT) schedule replacing the ranges above from
    #   each fraction of training on; read as text "0:2.5,2.0,0.7,0.95;0.5:2.2,1.8,0.75,0.9" (written
    #   so) or a list of [fraction, tau_start, tau_end, lambda_start, lambda_end] (adr.schedules)

    def checks(self) -> list[Check]:
        return [
            ("adr.tau_start", self.tau_start, self.tau_start > 0.0, "a temperature > 0"),
            ("adr.tau_end", self.tau_end, self.tau_end > 0.0, "a temperature > 0"),
            ("adr.lambda_start", self.lambda_start, 0.0 <= self.lambda_start <= 1.0,
             "a number in [0, 1]"),
            ("adr.lambda_end", self.lambda_end, 0.0 <= self.lambda_end <= 1.0,
             "a number in [0, 1]"),
            ("adr.ema_decay", self.ema_decay, 0.0 < self.ema_decay < 1.0, "a number in (0, 1)"),
        ]

    def check_order(self) -> None:
        """The annealing directions of Sec. 4.2 and the learned schedule's values."""
        if self.tau_end > self.tau_start:
            raise ConfigError(f"adr.tau_end: {self.tau_end} is above adr.tau_start={self.tau_start}; "
                              "the temperature anneals from high to low (Sec. 4.2)")
        if self.lambda_end < self.lambda_start:
            raise ConfigError(f"adr.lambda_end: {self.lambda_end} is below adr.lambda_start="
                              f"{self.lambda_start}; the interpolation rises over training (Sec. 4.2)")
        if self.segments:
            text = format_segments(self.segments)
            fractions = [seg.start for seg in self.segments]
            if (fractions[0] != 0.0 or fractions != sorted(set(fractions))
                    or fractions[-1] >= 1.0):
                raise ConfigError(f"adr.segments: invalid value {text!r}; segment fractions must "
                                  "start at 0, rise, and stay below 1")
            for _, t0, t1, l0, l1 in self.segments:
                if min(t0, t1) <= 0 or not (0 <= l0 <= 1 and 0 <= l1 <= 1):
                    raise ConfigError(f"adr.segments: invalid value {text!r}; temperatures "
                                      "must be > 0 and lambdas in [0, 1]")


@dataclass(kw_only=True)
class AWPConfig:
    enabled: bool = False  # adversarial weight perturbation, Wu et al. 2020
    gamma: float = 0.005  # relative perturbation radius per layer, Sec. 5.1
    proxy_lr: float = 0.01  # learning rate of the proxy step that finds the perturbation (Wu et al.)
    warmup_epochs: int = 0  # epochs of plain training before AWP starts

    def checks(self) -> list[Check]:
        return [
            ("awp.gamma", self.gamma, self.gamma >= 0.0, "a number >= 0"),
            ("awp.proxy_lr", self.proxy_lr, self.proxy_lr > 0.0, "a number > 0"),
            ("awp.warmup_epochs", self.warmup_epochs, self.warmup_epochs >= 0, "an integer >= 0"),
        ]


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 0.1  # initial (piecewise) or peak (cyclic) learning rate, Sec. 5.1 / 5.4
    schedule: Schedule = "piecewise"  # piecewise: /10 at 50 % and 75 %; cyclic: warm-up then cosine to 0
    warmup_epochs: float = 0.0  # linear warm-up length of the cyclic schedule, epochs (10 in Sec. 5.4)
    momentum: float = 0.9  # SGD Nesterov momentum, Sec. 5.1
    nesterov: bool = True  # Sec. 5.1; the official AWP optimizer has none (AWP presets: false)
    no_decay_norm_bias: bool = False  # no weight decay on BatchNorm scales and shifts (official
    #                                   code, Wang et al., with DDPM data; a linear bias keeps it)
    weight_decay: float = 5e-4  # Sec. 5.1

    def checks(self) -> list[Check]:
        return [
            ("optim.lr", self.lr, self.lr > 0.0, "a number > 0"),
            ("optim.momentum", self.momentum, 0.0 <= self.momentum < 1.0, "a number in [0, 1)"),
            ("optim.weight_decay", self.weight_decay, self.weight_decay >= 0.0, "a number >= 0"),
        ]


@dataclass(kw_only=True)
class TrainConfig:
    method: Method = "at"  # at (PGD-AT) | trades | standard (no attack; for pseudo-labelling)
    epochs: int = 200  # CIFAR-equivalent epochs, Sec. 5.1
    batch_size: int = 128  # global batch, Sec. 5.1
    max_steps: int | None = None  # optional cap on optimizer steps; schedules span the capped run
    trades_beta: float = 6.0  # TRADES robustness weight, Sec. 5.1
    trades_attack: TradesAttack = "zhang"  # zhang (Zhang et al. 2019: eval mode, 0.001 N(0,1) start) |
    #                               official (yuyuwu5/ADR: train mode, 0.001 U[0,1) start, one
    #                               clean+adv forward); the TRADES presets use official
    wa: bool = False  # select and report the EMA (weight-averaged) model, "+WA" in Table 2
    precision: Precision = "fp32"  # fp32 | bf16 (autocast on the run's device)
    channels_last: bool = False  # NHWC memory layout (for GPUs; runs on the CPU too)
    compile: bool = False  # torch.compile the model
    compile_backend: CompileBackend = "inductor"  # torch.compile backend; aot_eager: the same graphs, no codegen (tests)
    sync_batchnorm: bool = False  # SyncBatchNorm across workers (CUDA only; Ray Train runs)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 50  # steps between progress-bar loss updates (each is one host sync)
    keep_checkpoints: int = 2  # epoch checkpoints kept in checkpoints/ besides best.pt and final.pt
    val_every: int = 1  # epochs between validations; the last epoch and checkpoint epochs validate too
    checkpoint_every: int = 1  # epochs between checkpoints (plus the last, and improved ones for best.pt)
    checkpoint_minutes: float = 0.0  # and at least this long apart, minutes (rank 0's clock); 0: no floor
    checkpoint_upload: CheckpointUpload = "async"  # Ray runs: async (rank 0 uploads while training goes on) | sync

    def checks(self) -> list[Check]:
        return [
            ("train.epochs", self.epochs, self.epochs >= 1, "an integer >= 1"),
            ("train.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1"),
            ("train.max_steps", self.max_steps, self.max_steps is None or self.max_steps >= 1,
             "null or an integer >= 1"),
            ("train.trades_beta", self.trades_beta, self.trades_beta >= 0.0, "a number >= 0"),
            ("train.device", self.device,
             re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             "auto, cpu, cuda or cuda:N"),
            ("train.log_every", self.log_every, self.log_every >= 1, "an integer >= 1"),
            ("train.val_every", self.val_every, self.val_every >= 1, "an integer >= 1 (epochs)"),
            ("train.checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 1,
             "an integer >= 1 (epochs)"),
            ("train.checkpoint_minutes", self.checkpoint_minutes, self.checkpoint_minutes >= 0,
             "a number of minutes >= 0"),
            ("train.keep_checkpoints", self.keep_checkpoints, self.keep_checkpoints >= 1,
             "an integer >= 1"),
        ]


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


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The declared types of a dataclass's fields (typing.get_type_hints, which is slow: once per
    class, not once per config read or validated). Shared: do not modify."""
    return typing.get_type_hints(cls)


@functools.cache
def _literal_fields(cls: type) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(field, allowed values) of every Literal field of a section class."""
    hints = field_types(cls)
    return tuple((f.name, typing.get_args(hints[f.name])) for f in dataclasses.fields(cls)
                 if typing.get_origin(hints[f.name]) is Literal)


def choice_checks(prefix: str, section: Any) -> list[Check]:
    """Every Literal field of a section against its Literal's values."""
    return [(f"{prefix}.{name}", (value := getattr(section, name)), value in allowed,
             ", ".join(allowed)) for name, allowed in _literal_fields(type(section))]


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field a user can get wrong; raise ConfigError with one line on the first."""
    d, o, t = cfg.data, cfg.optim, cfg.train
    checks: list[Check] = []
    for f in dataclasses.fields(RunConfig):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            checks += choice_checks(f.name, section) + section.checks()
    checks += [
        # with train.epochs itself invalid, that (checked above) is the error to report
        ("optim.warmup_epochs", o.warmup_epochs, t.epochs < 1 or 0.0 <= o.warmup_epochs <= t.epochs,
         f"a number in [0, train.epochs={t.epochs}]"),
        ("seed", cfg.seed, 0 <= cfg.seed < 2**62, "an integer in [0, 2**62)"),  # + rank offsets
    ]
    for key, value, ok, allowed in checks:
        if not ok:
            _fail(key, value, allowed)
    cfg.adr.check_order()
    if d.synthetic and t.batch_size >= 1 and round(d.synthetic_fraction * t.batch_size) == 0:
        raise ConfigError(f"data.synthetic_fraction: {d.synthetic_fraction} of train.batch_size "
                          f"{t.batch_size} draws no synthetic image; allowed: a number in (0, 1) "
                          "with data.synthetic set, or data.synthetic=null")
    if t.method == "standard" and (cfg.adr.enabled or cfg.awp.enabled):
        raise ConfigError("train.method: 'standard' trains without an attack; "
                          "set adr.enabled=false and awp.enabled=false")
    return cfg
