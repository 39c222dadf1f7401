"""AutoAttack: the official attacks, driven batch by batch so an interrupted run resumes."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from adr_scale.config import ConfigError
from adr_scale.data import ArrayDataset, to_float
from adr_scale.evaluate.checkpoint import LoadedModel
from adr_scale.evaluate.options import AUTOATTACK_VERSIONS, EvalOptions, note
from adr_scale.evaluate.pgd import accuracy
from adr_scale.run.directory import atomic_write_text
from adr_scale.run.provenance import dist_version

AA_TARGET_CLASSES = 9  # APGD-T and FAB-T targets in the standard version (Croce & Hein 2020)

AA_LOGGER = "auto-attack"  # pyautoattack's logger; the repository version is routed to it too

STATE_FORMAT = 1


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
            return AABackend("autoattack", dist_version("autoattack") or "git", module)
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
    if (not isinstance(state, dict) or state.get("fingerprint") != fingerprint
            or state.get("format") != STATE_FORMAT):
        note(f"AutoAttack state {str(path)!r} is unreadable, of another format or was made for "
             "another evaluation; starting afresh")
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
        note(f"AutoAttack {attack}: robust accuracy {accuracy(robust):.2%} "
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
