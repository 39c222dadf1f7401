"""Sanity checks for gradient masking (Carlini et al. 2019; the paper's Appendix E)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adr_scale.data import ArrayDataset
from adr_scale.evaluate.options import PGD_ALPHA_FRACTION, format_eps
from adr_scale.evaluate.pgd import accuracy, pgd_flags

SANITY_EPS_255 = (0, 1, 2, 4, 8, 16, 32, 64, 128)  # eps grid in 1/255 units (Appendix E, Fig. 6a)

SANITY_EPS_STEPS = 20  # PGD steps of the eps sweep

SANITY_STEPS = (10, 20, 50, 100)  # PGD steps of the steps sweep (Appendix E, Fig. 6b)


def tolerance(acc: float, n: int) -> float:
    """One binomial standard error of an accuracy on n examples, and at least one example."""
    return max(1.0 / n, math.sqrt(max(acc * (1.0 - acc), 0.0) / n))


def check(name: str, passed: bool, reason: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "reason": reason}


def _non_increasing(name: str, xs: list[Any], accs: list[float], n: int, what: str) -> dict:
    for i in range(1, len(accs)):
        (x0, a0), (x1, a1) = (xs[i - 1], accs[i - 1]), (xs[i], accs[i])
        if a1 > a0 + tolerance(a0, n):
            return check(name, False, f"accuracy rises from {a0:.2%} at {what} {x0} to {a1:.2%} "
                          f"at {x1}, more than one standard error ({tolerance(a0, n):.2%})")
    return check(name, True, f"non-increasing in {what} within one standard error "
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
        check("eps0_equals_clean", abs(eps_acc[0] - clean_acc) < 0.5 / n,
               f"PGD at eps 0 gives {eps_acc[0]:.2%}, clean accuracy is {clean_acc:.2%}"),
        _non_increasing("eps_sweep_non_increasing", [f"{g:g}/255" for g in grid_255], eps_acc, n,
                        "eps"),
        check("large_eps_reaches_zero", eps_acc[-1] == 0.0,
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
