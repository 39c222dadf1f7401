"""`python -m adr_scale.evaluate`: test-set accuracy of a checkpoint under clean, PGD-K and AutoAttack.

Examples:
  python -m adr_scale.evaluate --run runs/c100                      # best.pt and final.pt: Table 1
  python -m adr_scale.evaluate --checkpoint runs/c100/best.pt --attacks clean,pgd100 --sanity
  python -m adr_scale.evaluate --run runs/smoke --eps 16/255 --n-examples 100 --device cpu
  python -m adr_scale.evaluate --checkpoint runs/c100/best.pt --attacks clean --export zoo/c100

Attacks: clean; pgdK (PGD with K steps of eps/4 from one uniform random start, e.g. pgd10, pgd100);
autoattack (the official code, version "standard": APGD-CE, APGD-T, FAB-T, Square); autoattack-plus.
Only the test split is used, and only its first --n-examples images. Rerunning an interrupted
command resumes AutoAttack from the state file in --out (delete it to start again).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import logging
import math
import platform
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from adr_scale.attacks import pgd_linf
from adr_scale.cli import OneLineParser
from adr_scale.config import ConfigError, RunConfig, to_dict
from adr_scale.data import (
    DATASET_INFO,
    ArrayDataset,
    DatasetInfo,
    eval_batches,
    load_splits,
    to_float,
)
from adr_scale.engine import build_model, config_of, nonfinite_tensors, resolve_device
from adr_scale.models import create_model
from adr_scale.rundir import atomic_write_text
from adr_scale.runguard import check_writable

DEFAULT_ATTACKS = ("clean", "pgd10", "autoattack")
AUTOATTACK_VERSIONS = {"autoattack": "standard", "autoattack-plus": "plus"}
ATTACKS_ALLOWED = "clean, pgdK (K >= 1 steps, e.g. pgd10, pgd100), autoattack, autoattack-plus"
PGD_ALPHA_FRACTION = 0.25  # step size eps/4: 2/255 at 8/255, as in the paper and our validation
AA_TARGET_CLASSES = 9  # APGD-T and FAB-T targets in the standard version (Croce & Hein 2020)
AA_LOGGER = "auto-attack"  # pyautoattack's logger; the repository version is routed to it too
SANITY_EPS_255 = (0, 1, 2, 4, 8, 16, 32, 64, 128)  # eps grid in 1/255 units (Appendix E, Fig. 6a)
SANITY_EPS_STEPS = 20  # PGD steps of the eps sweep
SANITY_STEPS = (10, 20, 50, 100)  # PGD steps of the steps sweep (Appendix E, Fig. 6b)
TEST_SECTION = "## Test set (adr_scale.evaluate)"
STATE_FORMAT = 1
EXPORT_FORMAT = 1


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


# ---------------------------------------------------------------------------------------------
# Parsing user input


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


# ---------------------------------------------------------------------------------------------
# Checkpoints and the test split


@dataclass
class LoadedModel:
    module: nn.Module  # eval mode, no parameter gradients, on the evaluation device
    cfg: RunConfig
    info: DatasetInfo
    path: Path
    which: str  # ema | student
    epoch: int
    step: int


def _read_checkpoint(path: Path, flag: str) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{flag}: {str(path)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"{flag}: {str(path)!r} is a directory; pass a .pt file "
                          "(or --run for a run directory)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a file that is not a checkpoint
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(f"{flag}: {str(path)!r} is not a PyTorch checkpoint "
                          f"(torch.load failed: {first})") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        found = ", ".join(sorted(map(str, ckpt))[:5]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(f"{flag}: {str(path)!r} is not an adr_scale training checkpoint (no "
                          f"'model' and 'config' entries; found {found}); an exported model.pt "
                          "loads with adr_scale.evaluate.load_exported")
    return ckpt


def _check_weights(model: nn.Module, weights: Any, path: Path, which: str, arch: str) -> None:
    """Compare names and shapes first, so a wrong architecture is one line, not a torch dump."""
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise ConfigError(f"{str(path)!r}: its {which!r} entry is not a state_dict")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    reshaped = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    if not (missing or unexpected or reshaped):
        return
    if reshaped:
        k = reshaped[0]
        example = f"{k!r} is {list(got[k])} in the file, {list(want[k])} in the model"
    else:
        example = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
    raise ConfigError(f"{str(path)!r}: its {which} weights do not fit model.arch={arch!r} of its "
                      f"config ({len(missing)} missing, {len(unexpected)} unexpected, "
                      f"{len(reshaped)} of another shape; e.g. {example})")


def load_model(path: str | Path, which: str | None = None, device: str | torch.device = "cpu",
               flag: str = "--checkpoint") -> LoadedModel:
    """The student or EMA (WA) network of a training checkpoint, ready to attack."""
    path = Path(path)
    ckpt = _read_checkpoint(path, flag)
    try:
        cfg = config_of(ckpt)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {str(path)!r} holds an invalid config: {exc}") from None
    which = which or ("ema" if cfg.train.wa else "student")
    key = "ema" if which == "ema" else "model"
    if key not in ckpt:
        raise ConfigError(f"--model: {str(path)!r} holds no {which!r} weights; allowed: student")
    info = DATASET_INFO[cfg.data.dataset]
    model = build_model(cfg, info)
    _check_weights(model, ckpt[key], path, which, cfg.model.arch)
    bad = nonfinite_tensors(ckpt[key])
    if bad:  # a diverged net predicts one class: its accuracy would look like a result
        raise ConfigError(f"{flag}: {str(path)!r} holds non-finite {which} weights ({len(bad)} "
                          f"tensors with NaN or inf, e.g. {bad[0]!r}); the run diverged")
    model.load_state_dict(ckpt[key])
    model.eval().requires_grad_(False)  # attacks need input gradients only
    return LoadedModel(module=model.to(device), cfg=cfg, info=info, path=path, which=which,
                       epoch=int(ckpt.get("epoch", -1)), step=int(ckpt.get("step", -1)))


def load_test_set(cfg: RunConfig, data_root: str | None, n_examples: int | None) -> ArrayDataset:
    """The first n images of the test split (never validation or training images)."""
    if data_root is not None and cfg.data.dataset == "digits":
        raise ConfigError(f"--data-root: {data_root!r} is not read: digits is bundled with "
                          "scikit-learn; drop --data-root")
    data_cfg = replace(cfg.data, root=data_root) if data_root is not None else cfg.data
    try:
        test = load_splits(data_cfg).test
    except ConfigError as exc:
        if data_root is not None:
            raise ConfigError(f"--data-root: {exc}") from None
        raise ConfigError(f"{exc} (the checkpoint's data.root; override it with --data-root)") from None
    if n_examples is None:
        return test
    if not 1 <= n_examples <= len(test):
        raise ConfigError(f"--n-examples: invalid value {n_examples}; allowed: 1 to {len(test)} "
                          f"(the {cfg.data.dataset} test split)")
    return ArrayDataset(test.images[:n_examples].contiguous(), test.labels[:n_examples])


# ---------------------------------------------------------------------------------------------
# Clean and PGD accuracy


def _batches(data: ArrayDataset, batch_size: int, device: torch.device, desc: str,
             progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    total = math.ceil(len(data) / batch_size)
    yield from tqdm(eval_batches(data, batch_size, device), total=total, desc=desc, unit="batch",
                    disable=not progress, leave=False, dynamic_ncols=True)


@torch.no_grad()
def clean_flags(model: nn.Module, data: ArrayDataset, *, batch_size: int, device: torch.device,
                ) -> torch.Tensor:
    """(N,) bool: which test images the model classifies correctly."""
    out = [model(to_float(x)).argmax(1) == y for x, y in eval_batches(data, batch_size, device)]
    return torch.cat(out).cpu()


def pgd_flags(model: nn.Module, data: ArrayDataset, *, eps: float, steps: int, batch_size: int,
              device: torch.device, seed: int, alpha: float | None = None,
              progress: bool = False) -> torch.Tensor:
    """(N,) bool: correct after Linf PGD-`steps` (one uniform random start, last iterate).

    The RNG is reseeded first, so every call draws the same random starts: with a fixed step size
    the PGD-10 trajectory is the prefix of the PGD-100 one, which is what the steps sweep compares.
    """
    alpha = PGD_ALPHA_FRACTION * eps if alpha is None else alpha
    torch.manual_seed(seed)
    out = []
    for images, labels in _batches(data, batch_size, device, f"PGD-{steps} {format_eps(eps)}",
                                   progress):
        x = to_float(images)  # (B, C, H, W) in [0, 1]
        if eps > 0:
            x = pgd_linf(model, x, labels, eps=eps, alpha=alpha, steps=steps)
        with torch.no_grad():
            out.append(model(x).argmax(1) == labels)
    return torch.cat(out).cpu()


# ---------------------------------------------------------------------------------------------
# AutoAttack: the official attacks, driven batch by batch so an interrupted run resumes


@dataclass
class AABackend:
    name: str  # autoattack (fra31's repository) | pyautoattack (PyPI)
    version: str
    module: Any


def autoattack_backend() -> AABackend:
    """fra31's `autoattack` when importable (installed from its repository), else `pyautoattack`."""
    with contextlib.suppress(ImportError):
        module = importlib.import_module("autoattack")
        if hasattr(module, "AutoAttack"):
            return AABackend("autoattack", _dist_version("autoattack") or "git", module)
    try:
        module = importlib.import_module("pyautoattack")
    except ImportError:
        raise ConfigError("--attacks: autoattack needs the official AutoAttack code: pip install "
                          "pyautoattack, or pip install git+https://github.com/fra31/auto-attack"
                          ) from None
    return AABackend("pyautoattack", getattr(module, "__version__", "?"), module)


class _RepoLogger:
    """fra31's AutoAttack prints through `logger.log(text)` ('Warning: ...' for its checks); send
    its lines to the same Python logger pyautoattack uses, so both are captured the same way."""

    def log(self, text: Any) -> None:
        text = str(text)
        log = logging.getLogger(AA_LOGGER)
        if text.startswith("Warning: "):
            log.warning(text[len("Warning: "):])
        else:
            log.debug(text)


def build_autoattack(backend: AABackend, model: nn.Module, *, eps: float, version: str,
                     device: torch.device, seed: int, num_classes: int) -> Any:
    if backend.name == "pyautoattack":
        aa = backend.module.AutoAttack(model, eps=eps, norm="Linf", version=version,
                                       device=str(device), seed=seed)
    else:
        aa = backend.module.AutoAttack(model, norm="Linf", eps=eps, version=version,
                                       device=str(device), seed=seed, verbose=False)
        aa.logger = aa.apgd.logger = aa.apgd_targeted.logger = _RepoLogger()
    targets = min(AA_TARGET_CLASSES, num_classes - 1)  # 9 for CIFAR-10 and digits
    aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, targets)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, targets)
    return aa


def attack_chunk(aa: Any, backend: AABackend, attack: str, x: torch.Tensor, y: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One official AutoAttack call with a single attack on one batch of still-robust points.

    Returns (x_adv, robust): the library's adversarial batch and (B,) bool still-correct flags.
    """
    aa.attacks_to_run = [attack]
    if backend.name == "pyautoattack":
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=len(x))
    else:
        x_adv, y_adv = aa.run_standard_evaluation(x, y, bs=len(x), return_labels=True)
    return x_adv, y_adv == y


@dataclass
class AAOutcome:
    robust: torch.Tensor  # (N,) bool, correct after every attack
    per_attack: dict[str, float]  # cumulative robust accuracy after clean and after each attack
    attack_seconds: dict[str, float]  # time inside each attack, over every session
    max_perturbation: float  # largest Linf distance of a returned adversarial example
    warnings: list[str]
    seconds: float  # over every session, including interrupted ones
    resumed: bool


def _flags_to_text(flags: torch.Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


def _read_state(path: Path | None, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        state = None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        _note(f"AutoAttack state {str(path)!r} is unreadable or was made for another "
              "evaluation; starting afresh")
        return None
    state["robust"] = torch.tensor([c == "1" for c in state["robust"]], dtype=torch.bool)
    return state


def _write_state(path: Path | None, state: dict[str, Any]) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps(state | {"robust": _flags_to_text(state["robust"])}))


@contextlib.contextmanager
def _captured_autoattack_output(backend: AABackend, verbose: bool) -> Iterator[list[str]]:
    """Collect AutoAttack's warnings (logger 'auto-attack' and Python warnings from its package);
    with `verbose`, also show its DEBUG progress lines on stderr."""
    messages: list[str] = []
    logger = logging.getLogger(AA_LOGGER)

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() not in messages:  # the checks repeat on every batch
                messages.append(record.getMessage())

    class Console(logging.Handler):  # through tqdm, so progress bars stay intact
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(f"[auto-attack] {record.getMessage()}", file=sys.stderr)

    handlers: list[logging.Handler] = [Collect(logging.WARNING)]
    if verbose:
        handlers.append(Console(logging.DEBUG))
    old_level = logger.level
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else min(old_level or logging.WARNING, logging.WARNING))
    package_dir = str(Path(backend.module.__file__).parent)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(old_level)
    for w in caught:
        if str(w.filename).startswith(package_dir):
            messages.append(f"{w.category.__name__}: {w.message}")
        else:  # not AutoAttack's: pass it on untouched
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def run_autoattack(aa: Any, backend: AABackend, x: torch.Tensor, y: torch.Tensor, *,
                   batch_size: int, state_path: Path | None = None,
                   fingerprint: dict[str, Any] | None = None, progress: bool = False,
                   verbose: bool = False) -> AAOutcome:
    """Run aa.attacks_to_run in order, each on the points still robust, batch by batch.

    This is the loop of AutoAttack's run_standard_evaluation (same order, same batches of still
    robust points, same seeds, so the same result), with our own state file written after every
    batch: pyautoattack 0.2.0 cannot restore its own (it saves the attack set as a string, so every
    restore fails its set comparison). x: (N, C, H, W) in [0, 1], y: (N,), both on aa's device.
    """
    attacks = list(aa.attacks_to_run)
    fingerprint = dict(fingerprint or {}) | {"attacks": attacks, "n": len(y)}
    start = time.perf_counter()
    with _captured_autoattack_output(backend, verbose) as messages:
        state = _read_state(state_path, fingerprint)
        resumed = state is not None
        if state is None:
            with torch.no_grad():
                robust = torch.cat([aa.model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                                    for i in range(0, len(y), batch_size)]).cpu()
            state = {"format": STATE_FORMAT, "fingerprint": fingerprint, "robust": robust,
                     "per_attack": {"clean": accuracy(robust)}, "done": [],
                     "queue": None, "max_perturbation": 0.0, "seconds": 0.0, "attack_seconds": {},
                     "warnings": []}
            _write_state(state_path, state)
        messages[:0] = [m for m in state["warnings"] if m not in messages]
        state["warnings"] = messages  # the handler appends here: each state write keeps them
        seconds_before = state["seconds"]
        for attack in attacks:
            if attack not in state["done"]:
                _run_one_attack(aa, backend, attack, x, y, state, batch_size, state_path,
                                progress, seconds_before, start)
        if len(state["per_attack"]) > 2 and "square" in state["per_attack"]:
            _module(backend, "checks").check_square_sr(dict(state["per_attack"]),
                                                        logger=_check_logger(backend))
    aa.attacks_to_run = attacks  # attack_chunk narrowed it to one attack at a time
    state["warnings"] = list(dict.fromkeys(messages))  # now with Python warnings from AutoAttack
    state["seconds"] = seconds_before + time.perf_counter() - start
    _write_state(state_path, state)
    return AAOutcome(robust=state["robust"], per_attack=dict(state["per_attack"]),
                     attack_seconds={k: round(v, 3) for k, v in state["attack_seconds"].items()},
                     max_perturbation=state["max_perturbation"], warnings=state["warnings"],
                     seconds=state["seconds"], resumed=resumed)


def _run_one_attack(aa: Any, backend: AABackend, attack: str, x: torch.Tensor, y: torch.Tensor,
                    state: dict[str, Any], batch_size: int, state_path: Path | None,
                    progress: bool, seconds_before: float, start: float) -> None:
    robust: torch.Tensor = state["robust"]
    if state["queue"] is None:  # the points robust when this attack starts, in index order
        state["queue"] = torch.nonzero(robust).flatten().tolist()
    n_batches = math.ceil(len(state["queue"]) / batch_size)
    bar = tqdm(total=n_batches, desc=f"AutoAttack {attack}", unit="batch", disable=not progress,
               leave=False, dynamic_ncols=True)
    while state["queue"]:
        idx = torch.tensor(state["queue"][:batch_size])
        xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
        t0 = time.perf_counter()
        x_adv, still = attack_chunk(aa, backend, attack, xb, yb)
        spent = state.setdefault("attack_seconds", {})
        spent[attack] = spent.get(attack, 0.0) + time.perf_counter() - t0
        robust[idx] = still.cpu()
        pert = (x_adv - xb).abs().amax().item()
        state["max_perturbation"] = max(state["max_perturbation"], pert)
        state["queue"] = state["queue"][batch_size:]
        state["seconds"] = seconds_before + time.perf_counter() - start
        _write_state(state_path, state)
        bar.update(1)
        bar.set_postfix(robust=f"{accuracy(robust):.2%}")
    bar.close()
    state["per_attack"][attack] = accuracy(robust)
    state["done"].append(attack)
    state["queue"] = None
    _write_state(state_path, state)
    if progress:
        _note(f"AutoAttack {attack}: robust accuracy {accuracy(robust):.2%} "
              f"({state.get('attack_seconds', {}).get(attack, 0.0):.1f} s)")


def _module(backend: AABackend, name: str) -> Any:
    return importlib.import_module(f"{backend.module.__name__}.{name}")


def _check_logger(backend: AABackend) -> Any:
    return logging.getLogger(AA_LOGGER) if backend.name == "pyautoattack" else _RepoLogger()


def autoattack_flags(loaded: LoadedModel, data: ArrayDataset, *, name: str, eps: float,
                     opts: EvalOptions, device: torch.device, state_path: Path | None,
                     ) -> tuple[AAOutcome, dict[str, Any]]:
    backend = autoattack_backend()
    version = AUTOATTACK_VERSIONS[name]
    aa = build_autoattack(backend, loaded.module, eps=eps, version=version, device=device,
                          seed=opts.seed, num_classes=loaded.info.num_classes)
    stat = loaded.path.stat()
    fingerprint = {"checkpoint": str(loaded.path.resolve()), "size": stat.st_size,
                   "mtime_ns": stat.st_mtime_ns, "epoch": loaded.epoch, "step": loaded.step,
                   "model": loaded.which, "eps": eps, "seed": opts.seed, "version": version,
                   "backend": f"{backend.name} {backend.version}"}
    attacks = list(aa.attacks_to_run)
    x = to_float(data.images.to(device))
    y = data.labels.to(device)
    outcome = run_autoattack(aa, backend, x, y, batch_size=opts.batch_size, state_path=state_path,
                             fingerprint=fingerprint, progress=opts.progress, verbose=opts.verbose)
    details = {"version": version, "attacks": attacks, "backend": backend.name,
               "backend_version": backend.version,
               "n_target_classes": aa.apgd_targeted.n_target_classes,
               "per_attack": outcome.per_attack, "attack_seconds": outcome.attack_seconds,
               "max_perturbation": outcome.max_perturbation,
               "warnings": outcome.warnings, "resumed": outcome.resumed,
               "state_file": str(state_path) if state_path else None}
    return outcome, details


# ---------------------------------------------------------------------------------------------
# Sanity checks for gradient masking (Carlini et al. 2019; the paper's Appendix E)


def accuracy(flags: torch.Tensor) -> float:
    """Share of True in a (N,) bool tensor, as an exact Python float (no float32 rounding)."""
    return flags.sum().item() / len(flags)


def tolerance(acc: float, n: int) -> float:
    """One binomial standard error of an accuracy on n examples, and at least one example."""
    return max(1.0 / n, math.sqrt(max(acc * (1.0 - acc), 0.0) / n))


def _check(name: str, passed: bool, reason: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "reason": reason}


def _non_increasing(name: str, xs: list[Any], accs: list[float], n: int, what: str) -> dict:
    for i in range(1, len(accs)):
        (x0, a0), (x1, a1) = (xs[i - 1], accs[i - 1]), (xs[i], accs[i])
        if a1 > a0 + tolerance(a0, n):
            return _check(name, False, f"accuracy rises from {a0:.2%} at {what} {x0} to {a1:.2%} "
                          f"at {x1}, more than one standard error ({tolerance(a0, n):.2%})")
    return _check(name, True, f"non-increasing in {what} within one standard error "
                  f"({', '.join(f'{a:.2%}' for a in accs)})")


def sanity_checks(model: nn.Module, data: ArrayDataset, *, eps: float, clean_acc: float,
                  batch_size: int, device: torch.device, seed: int, out: Path | None,
                  progress: bool = False) -> dict[str, Any]:
    """PGD accuracy against eps (must fall to 0) and against steps (must not rise)."""
    n = len(data)
    grid = sorted({e / 255 for e in SANITY_EPS_255} | {eps})
    kw = dict(batch_size=batch_size, device=device, seed=seed, progress=progress)
    eps_acc = [accuracy(pgd_flags(model, data, eps=e, steps=SANITY_EPS_STEPS, **kw))
               for e in grid]
    steps_acc = [accuracy(pgd_flags(model, data, eps=eps, steps=k, **kw)) for k in SANITY_STEPS]
    grid_255 = [round(e * 255, 4) for e in grid]
    checks = [
        _check("eps0_equals_clean", abs(eps_acc[0] - clean_acc) < 0.5 / n,
               f"PGD at eps 0 gives {eps_acc[0]:.2%}, clean accuracy is {clean_acc:.2%}"),
        _non_increasing("eps_sweep_non_increasing", [f"{g:g}/255" for g in grid_255], eps_acc, n,
                        "eps"),
        _check("large_eps_reaches_zero", eps_acc[-1] == 0.0,
               f"PGD-{SANITY_EPS_STEPS} at eps {grid_255[-1]:g}/255 leaves "
               f"{round(eps_acc[-1] * n)} of {n} correct ({eps_acc[-1]:.2%}); must be 0"),
        _non_increasing("steps_sweep_non_increasing", list(SANITY_STEPS), steps_acc, n, "steps"),
    ]
    result = {"eps_255": grid_255, "eps_sweep_steps": SANITY_EPS_STEPS, "eps_sweep_acc": eps_acc,
              "steps": list(SANITY_STEPS), "steps_sweep_eps": eps, "steps_sweep_acc": steps_acc,
              "alpha": f"eps * {PGD_ALPHA_FRACTION:g}", "random_start": "uniform, the same for "
              "every run (reseeded)", "tolerance": "one binomial standard error, at least 1/n",
              "checks": checks, "plot": None}
    if out is not None:
        result["plot"] = plot_sanity(out / "sanity.png", result, eps)
    return result


def plot_sanity(path: Path, sanity: dict[str, Any], eps: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(sanity["eps_255"], [100 * v for v in sanity["eps_sweep_acc"]], "o-")
    a.set_xscale("symlog", linthresh=1)
    a.set(title=f"PGD-{sanity['eps_sweep_steps']} accuracy vs radius", xlabel="eps (x/255)",
          ylabel="accuracy (%)", ylim=(-2, 102))
    b.plot(sanity["steps"], [100 * v for v in sanity["steps_sweep_acc"]], "o-")
    b.set_xscale("log")
    b.set(title=f"PGD accuracy vs steps at eps {format_eps(eps)}", xlabel="PGD steps",
          ylabel="accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


# ---------------------------------------------------------------------------------------------
# One checkpoint: every attack, the checks, report.json and report.md


def evaluate_checkpoint(path: str | Path, out: str | Path, opts: EvalOptions,
                        test: ArrayDataset | None = None,
                        loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint on the test split; write out/report.json and out/report.md."""
    device = resolve_device(opts.device)
    loaded = loaded or load_model(path, opts.model, device)
    data = test if test is not None else load_test_set(loaded.cfg, opts.data_root, opts.n_examples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = _report_header(loaded, data, opts, device)
    for name in opts.attacks:
        _note(f"{attack_label(name)} on {len(data)} test images of {loaded.path}", opts.progress)
        report["attacks"][name] = _run_attack(name, loaded, data, opts, device, out)
    report["checks"] = ordering_checks(report["attacks"], len(data))
    if opts.sanity:
        clean = report["attacks"].get("clean", {}).get("accuracy")
        if clean is None:
            clean = accuracy(clean_flags(loaded.module, data, batch_size=opts.batch_size,
                                         device=device))
        report["sanity"] = sanity_checks(loaded.module, data, eps=opts.eps, clean_acc=clean,
                                         batch_size=opts.batch_size, device=device, seed=opts.seed,
                                         out=out, progress=opts.progress)
        report["checks"] += report["sanity"]["checks"]
    report["warnings"] = [f"AutoAttack: {w}" for a in report["attacks"].values()
                          for w in a.get("warnings", [])]
    report["warnings"] += [f"check {c['name']} failed: {c['reason']}" for c in report["checks"]
                           if not c["passed"]]
    for message in report["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def _report_header(loaded: LoadedModel, data: ArrayDataset, opts: EvalOptions,
                   device: torch.device) -> dict[str, Any]:
    return {
        "checkpoint": str(loaded.path.resolve()), "epoch": loaded.epoch, "step": loaded.step,
        "model": loaded.which, "dataset": loaded.cfg.data.dataset, "arch": loaded.cfg.model.arch,
        "split": "test", "n": len(data), "eps": opts.eps, "eps_text": format_eps(opts.eps),
        "train_eps": loaded.cfg.attack.eps, "batch_size": opts.batch_size, "device": str(device),
        "seed": opts.seed, "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": package_versions(opts.attacks), "git_revision": git_revision(),
        "config": to_dict(loaded.cfg), "attacks": {},
    }


def _run_attack(name: str, loaded: LoadedModel, data: ArrayDataset, opts: EvalOptions,
                device: torch.device, out: Path) -> dict[str, Any]:
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    eps = opts.eps
    seconds = None
    if name == "clean":
        flags, eps = clean_flags(loaded.module, data, batch_size=opts.batch_size, device=device), 0.0
    elif name in AUTOATTACK_VERSIONS:
        state_path = out / f"autoattack-{AUTOATTACK_VERSIONS[name]}.state.json"
        outcome, extra = autoattack_flags(loaded, data, name=name, eps=eps, opts=opts,
                                          device=device, state_path=state_path)
        flags, seconds = outcome.robust, outcome.seconds  # over every session, if resumed
    else:
        steps = int(name[3:])
        extra = {"steps": steps, "alpha": PGD_ALPHA_FRACTION * eps, "random_start": "uniform",
                 "restarts": 1}
        flags = pgd_flags(loaded.module, data, eps=eps, steps=steps, batch_size=opts.batch_size,
                          device=device, seed=opts.seed, progress=opts.progress)
    if seconds is None:
        seconds = time.perf_counter() - start
    acc = accuracy(flags)
    _note(f"{attack_label(name)}: {acc:.2%} of {len(flags)} ({seconds:.1f} s)", opts.progress)
    return {"accuracy": acc, "correct": int(flags.sum()), "n": len(flags), "eps": eps,
            "seconds": round(seconds, 3), **extra}


def ordering_checks(attacks: dict[str, dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """A robust accuracy above the clean one, or AutoAttack above PGD, means a broken attack."""
    checks = []
    clean = attacks.get("clean", {}).get("accuracy")
    robust = {k: v["accuracy"] for k, v in attacks.items() if k != "clean"}
    if clean is not None:
        for name, acc in robust.items():
            checks.append(_check(f"{name}_at_most_clean", acc <= clean + tolerance(clean, n),
                                 f"{attack_label(name)} {acc:.2%} vs clean {clean:.2%}"))
    pgd = {k: v for k, v in robust.items() if k.startswith("pgd")}
    for name in (k for k in robust if k in AUTOATTACK_VERSIONS):
        for p, acc in pgd.items():
            checks.append(_check(f"{name}_at_most_{p}", robust[name] <= acc + tolerance(acc, n),
                                 f"{attack_label(name)} {robust[name]:.2%} vs "
                                 f"{attack_label(p)} {acc:.2%}"))
    return checks


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Test-set evaluation of `{report['checkpoint']}`",
        "",
        f"{report['model']} model, epoch {report['epoch']} (step {report['step']}); "
        f"{report['dataset']} {report['arch']}; first {report['n']} test images; Linf eps "
        f"{report['eps_text']} (trained at {format_eps(report['train_eps'])}); seed "
        f"{report['seed']}; device {report['device']}; created {report['created']}.",
        "",
        "| attack | accuracy (%) | correct / n | eps | seconds | details |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in report["attacks"].items():
        lines.append(f"| {attack_label(name)} | {100 * a['accuracy']:.2f} | {a['correct']} / "
                     f"{a['n']} | {format_eps(a['eps']) if a['eps'] else 0} | {a['seconds']:.1f} | "
                     f"{_details(a)} |")
    if report["checks"]:
        lines += ["", "## Checks", "", "| check | passed | reason |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'yes' if c['passed'] else '**NO**'} | {c['reason']} |"
                  for c in report["checks"]]
    if report.get("sanity", {}).get("plot"):
        lines += ["", f"![sanity checks]({report['sanity']['plot']})"]
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in report["warnings"]] or ["None."]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines += ["", f"Versions: {versions}; git revision {report['git_revision'] or 'unknown'}.", ""]
    return "\n".join(lines)


def _details(a: dict[str, Any]) -> str:
    if "steps" in a:
        return f"step {format_eps(a['alpha'])}, 1 uniform random start, last iterate"
    if "per_attack" in a:
        chain = " -> ".join(f"{k} {100 * v:.2f}" for k, v in a["per_attack"].items())
        resumed = "; resumed" if a["resumed"] else ""
        return (f"{a['backend']} {a['backend_version']}, {a['version']}, "
                f"{a['n_target_classes']} targets; {chain}{resumed}")
    return ""


def package_versions(attacks: list[str]) -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "adr-scale": _dist_version("adr-scale") or "?"}
    if any(a in AUTOATTACK_VERSIONS for a in attacks):
        backend = autoattack_backend()
        versions[backend.name] = backend.version
    return versions


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    """The commit of the source tree this package runs from, read from .git (no git process)."""
    root = Path(__file__).resolve().parents[1]
    git = root / ".git"
    with contextlib.suppress(OSError, IndexError):
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        common = git / (git / "commondir").read_text().strip() if (git / "commondir").exists() else git
        for base in (git, common):
            if (base / ref).exists():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    return None


def _note(message: str, show: bool = True) -> None:
    if show:
        tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# A run directory: best.pt and final.pt, the Best / Final / Diff table


def evaluate_run(run_dir: str | Path, out: str | Path | None, opts: EvalOptions) -> dict[str, Any]:
    """Evaluate best.pt and final.pt; fill summary.json["test"] and summary.md's test section."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"--run: {str(run)!r} is not a directory")
    for name in ("best.pt", "final.pt"):
        if not (run / name).is_file():
            raise ConfigError(f"--run: {str(run)!r} has no {name}; has the run finished? "
                              "(evaluate a single checkpoint with --checkpoint)")
    out = Path(out) if out is not None else run / "eval"
    first = load_model(run / "best.pt", opts.model, "cpu", flag="--run")
    # A bad final.pt must fail before anything is written under eval/.
    load_model(run / "final.pt", first.which, "cpu", flag="--run")
    test = load_test_set(first.cfg, opts.data_root, opts.n_examples)
    opts = replace(opts, model=first.which)  # both checkpoints report the same network
    best = evaluate_checkpoint(run / "best.pt", out / "best", opts, test)
    if (best["epoch"], best["step"]) == _epoch_step(run / "final.pt"):
        _note("final.pt is the best epoch: its report is best.pt's", opts.progress)
        final = dict(best, checkpoint=str((run / "final.pt").resolve()))
        (out / "final").mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "final" / "report.json", json.dumps(final, indent=2) + "\n")
        atomic_write_text(out / "final" / "report.md", report_markdown(final))
    else:
        final = evaluate_checkpoint(run / "final.pt", out / "final", opts, test)
    section = test_summary(best, final, run, out)
    _update_summary(run, section)
    atomic_write_text(out / "report.json", json.dumps(section, indent=2) + "\n")
    atomic_write_text(out / "report.md", test_markdown(section) + "\n")
    return section


def _epoch_step(path: Path) -> tuple[int, int]:
    ckpt = _read_checkpoint(path, "--run")
    return int(ckpt.get("epoch", -1)), int(ckpt.get("step", -2))


def test_summary(best: dict[str, Any], final: dict[str, Any], run: Path, out: Path,
                 ) -> dict[str, Any]:
    acc_best = {k: v["accuracy"] for k, v in best["attacks"].items()}
    acc_final = {k: v["accuracy"] for k, v in final["attacks"].items()}
    return {
        "model": best["model"], "dataset": best["dataset"], "split": "test", "n": best["n"],
        "eps": best["eps"], "eps_text": best["eps_text"],
        "best": {"epoch": best["epoch"], "checkpoint": "best.pt", "accuracy": acc_best},
        "final": {"epoch": final["epoch"], "checkpoint": "final.pt", "accuracy": acc_final},
        "diff": {k: acc_best[k] - acc_final[k] for k in acc_best},
        "reports": {k: _relative(out / k / "report.md", run) for k in ("best", "final")},
        "checks_failed": sorted({c["name"] for r in (best, final) for c in r["checks"]
                                 if not c["passed"]}),
        "created": best["created"],
    }


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def test_markdown(section: dict[str, Any]) -> str:
    b, f = section["best"], section["final"]
    lines = [
        TEST_SECTION,
        "",
        f"Accuracy (%) on the first {section['n']} {section['dataset']} test images, Linf eps "
        f"{section['eps_text']}, {section['model']} model, in the form of the paper's Table 1: "
        "*Best* is the checkpoint with the highest validation PGD accuracy (the test set never "
        "selects a checkpoint), *Final* the last epoch, *Diff* = Best - Final in points.",
        "",
        f"| attack | Best (epoch {b['epoch']}) | Final (epoch {f['epoch']}) | Diff |",
        "|---|---|---|---|",
    ]
    for name, acc in b["accuracy"].items():
        lines.append(f"| {attack_label(name)} | {100 * acc:.2f} | "
                     f"{100 * f['accuracy'][name]:.2f} | {100 * section['diff'][name]:+.2f} |")
    failed = ", ".join(section["checks_failed"]) or "none"
    lines += ["", f"Reports: `{section['reports']['best']}`, `{section['reports']['final']}`; "
              f"failed checks: {failed}."]
    return "\n".join(lines)


def replace_test_section(old: str, section: str) -> str:
    """Put `section` in place of the '## Test set' section of `old` (up to the next '## ')."""
    pattern = re.compile(r"^## Test set.*?(?=^## |\Z)", re.S | re.M)
    block = section.rstrip() + "\n"
    if pattern.search(old):
        return pattern.sub(lambda _: block + "\n", old, count=1).rstrip() + "\n"
    return (old.rstrip() + "\n\n" if old.strip() else "") + block


def _update_summary(run: Path, section: dict[str, Any]) -> None:
    summary_json = run / "summary.json"
    summary = json.loads(summary_json.read_text()) if summary_json.exists() else {}
    summary["test"] = section
    atomic_write_text(summary_json, json.dumps(summary, indent=2) + "\n")
    md = run / "summary.md"
    old = md.read_text() if md.exists() else ""
    atomic_write_text(md, replace_test_section(old, test_markdown(section)))


# ---------------------------------------------------------------------------------------------
# Export in the model zoo form: a plain state_dict and the arguments of create_model


def export_model(loaded: LoadedModel, out: str | Path, eps: float) -> Path:
    """Write out/model.pt (state_dict, normalisation included) and out/model.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = loaded.info
    meta = {
        "format": EXPORT_FORMAT,
        "architecture": loaded.cfg.model.arch, "num_classes": info.num_classes,
        "activation": loaded.cfg.model.activation, "in_channels": info.in_channels,
        "mean": list(info.mean), "std": list(info.std), "dataset": loaded.cfg.data.dataset,
        "eps": eps, "threat_model": "Linf", "inputs": "(B, C, H, W) in [0, 1]; the model normalises",
        "source": {"checkpoint": str(loaded.path.resolve()), "epoch": loaded.epoch,
                   "model": loaded.which},
    }
    state = {k: v.detach().cpu().clone() for k, v in loaded.module.state_dict().items()}
    torch.save(state, out / "model.pt")
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2) + "\n")
    return out


def load_exported(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The network of an `export_model` directory, in eval mode, taking [0, 1] inputs."""
    d = Path(directory)
    for name in ("model.json", "model.pt"):
        if not (d / name).is_file():
            raise ConfigError(f"load_exported: {str(d / name)!r} does not exist")
    meta = json.loads((d / "model.json").read_text())
    model = create_model(meta["architecture"], meta["num_classes"], meta["activation"],
                         in_channels=meta["in_channels"], mean=tuple(meta["mean"]),
                         std=tuple(meta["std"]))
    model.load_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True))
    return model.eval().to(device)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m adr_scale.evaluate", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="FILE", help="a training checkpoint (.pt)")
    source.add_argument("--run", metavar="DIR", help="a finished run directory: evaluates best.pt "
                        "and final.pt and fills the test section of summary.json / summary.md")
    parser.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                        help=f"comma list of: {ATTACKS_ALLOWED} (default: %(default)s)")
    parser.add_argument("--n-examples", type=int, metavar="N",
                        help="evaluate the first N test images (default: the whole test split)")
    parser.add_argument("--eps", default="8/255", help="Linf radius, e.g. 8/255 or 0.0314 "
                        "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--model", choices=("ema", "student"), help="network to evaluate "
                        "(default: ema if the run trained with train.wa=true, else student)")
    parser.add_argument("--data-root", help="directory of the dataset (default: data.root of the "
                        "checkpoint's config)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N "
                        "(default: %(default)s)")
    parser.add_argument("--out", metavar="DIR", help="report directory (default: DIR/eval for "
                        "--run, eval-<name> next to the checkpoint for --checkpoint)")
    parser.add_argument("--seed", type=int, default=0, help="PGD random starts and AutoAttack's "
                        "seed (default: %(default)s)")
    parser.add_argument("--sanity", action="store_true", help="PGD accuracy against eps and "
                        "against steps, checked and plotted (sanity.png)")
    parser.add_argument("--export", metavar="DIR", help="also write model.pt + model.json (load "
                        "with adr_scale.evaluate.load_exported); with --run, best.pt's model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or notes")
    parser.add_argument("--verbose", action="store_true", help="show AutoAttack's own log lines")
    return parser


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: invalid value {args.batch_size}; allowed: an integer >= 1")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise ConfigError(f"--device: invalid value {args.device!r}; allowed: auto, cpu, cuda, cuda:N")
    if args.n_examples is not None and args.n_examples < 1:
        raise ConfigError(f"--n-examples: invalid value {args.n_examples}; allowed: an integer >= 1")
    return EvalOptions(attacks=parse_attacks(args.attacks), n_examples=args.n_examples,
                       eps=parse_eps(args.eps), batch_size=args.batch_size, model=args.model,
                       data_root=args.data_root, device=args.device, seed=args.seed,
                       sanity=args.sanity, progress=not args.no_progress, verbose=args.verbose)


def run_cli(args: argparse.Namespace) -> None:
    opts = options_from_args(args)
    for flag, where in (("--out", args.out), ("--export", args.export)):
        if where:
            check_writable(where, flag)
    if args.run:
        section = evaluate_run(args.run, args.out, opts)
        print(test_markdown(section))
    else:
        path = Path(args.checkpoint)
        loaded = load_model(path, opts.model, resolve_device(opts.device))
        out = Path(args.out) if args.out else path.parent / f"eval-{path.stem}"
        report = evaluate_checkpoint(path, out, opts, loaded=loaded)
        accs = ", ".join(f"{attack_label(k)} {100 * v['accuracy']:.2f} %"
                         for k, v in report["attacks"].items())
        print(f"{path} ({report['model']}, epoch {report['epoch']}): {accs} on {report['n']} test "
              f"images at eps {report['eps_text']}; report {out / 'report.md'}")
    if args.export:
        if args.run:  # best.pt: selected on validation, never on the test set
            loaded = load_model(Path(args.run) / "best.pt", opts.model, "cpu", flag="--run")
        where = export_model(loaded, args.export, opts.eps)
        print(f"exported the {loaded.which} model of {loaded.path} to {where}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_cli(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume AutoAttack from its state file",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
