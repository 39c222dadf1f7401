"""Named presets: each a Python function, a small edit of a base, registered with `@preset`.

A preset reproduces the official configuration of its setting: the gin file of yuyuwu5/ADR
(OFFICIAL_CODE), whose README ties the paper's tables to those files, and that repository's code
where a gin file says nothing. Its paper-text variant (what the paper's prose states) is
PAPER_TEXT[name](); paper_overrides(name) lists the --set flags from the preset to it, and
docs/presets.md (written by `python -m adr_scale.presets_doc`) tabulates both field by field.

This module holds the registry and the project's own presets; adr_scale.config.official registers
the paper's grid, the DDPM runs and the SVHN grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adr_scale.config.io import to_dict
from adr_scale.config.schema import ConfigError, RunConfig, validate

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

