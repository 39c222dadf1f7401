"""What the evaluate CLI asks for: the options object, attack names, eps, and stderr notes."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from adr_scale.config import ConfigError

DEFAULT_ATTACKS = ("clean", "pgd10", "autoattack")

AUTOATTACK_VERSIONS = {"autoattack": "standard", "autoattack-plus": "plus"}

ATTACKS_ALLOWED = "clean, pgdK (K >= 1 steps, e.g. pgd10, pgd100), autoattack, autoattack-plus"

PGD_ALPHA_FRACTION = 0.25  # step size eps/4: 2/255 at 8/255, as in the paper and our validation


@dataclass(kw_only=True)
class EvalOptions:
    """What the CLI flags set; one object for both --checkpoint and --run."""

    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    n_examples: int | None = None  # first n of the test split; None: all of it
    eps: float = 8 / 255  # Linf radius in [0, 1] pixel units, paper Sec. 5.1
    batch_size: int = 256  # examples per attack batch
    model: str | None = None  # ema | student; None: ema if the run selected the WA model
    data_root: str | None = None  # replaces data.root of the checkpoint's config
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # PGD random starts and AutoAttack's seed
    sanity: bool = False  # eps and steps sweeps (Carlini et al. 2019; paper Appendix E)
    progress: bool = True  # progress bars and per-attack lines on stderr
    verbose: bool = False  # AutoAttack's own log lines on stderr


def parse_attacks(text: str) -> list[str]:
    """'clean,pgd10,autoattack' -> ['clean', 'pgd10', 'autoattack']; duplicates dropped."""
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        ok = name == "clean" or name in AUTOATTACK_VERSIONS or (
            re.fullmatch(r"pgd[0-9]+", name) is not None and int(name[3:]) >= 1)
        if not ok:
            raise ConfigError(f"--attacks: invalid value {raw.strip()!r}; allowed: {ATTACKS_ALLOWED}")
        if name not in names:
            names.append(name)
    return names


def parse_eps(text: str) -> float:
    """'8/255' or '0.0314' -> a radius in [0, 1] pixel units."""
    try:
        num, sep, den = text.partition("/")
        eps = float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError):
        eps = float("nan")
    if not 0.0 < eps <= 1.0:
        raise ConfigError(f"--eps: invalid value {text!r}; allowed: a number in (0, 1] or a "
                          "fraction such as 8/255")
    return eps


def attack_label(name: str) -> str:
    if name == "clean":
        return "Clean"
    if name in AUTOATTACK_VERSIONS:
        return "AutoAttack" + (" (plus)" if name == "autoattack-plus" else "")
    return f"PGD-{name[3:]}"


def format_eps(eps: float) -> str:
    scaled = eps * 255
    return f"{scaled:g}/255" if abs(scaled - round(scaled)) < 1e-6 else f"{eps:.5g}"


def note(message: str, show: bool = True) -> None:
    if show:
        tqdm.write(message, file=sys.stderr)
