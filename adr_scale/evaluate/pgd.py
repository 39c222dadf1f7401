"""Clean and PGD-K accuracy on the test split, as per-example correctness flags."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from adr_scale.attacks import pgd_linf
from adr_scale.data import ArrayDataset, eval_batches, to_float
from adr_scale.evaluate.options import PGD_ALPHA_FRACTION, format_eps


def accuracy(flags: torch.Tensor) -> float:
    """Share of True in a (N,) bool tensor, as an exact Python float (no float32 rounding)."""
    return flags.sum().item() / len(flags)


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
