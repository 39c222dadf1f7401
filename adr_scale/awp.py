"""Adversarial Weight Perturbation after Wu et al. 2020 ("Adversarial weight perturbation helps
robust generalization").

Each step, a proxy copy of the model takes one SGD step *up* the training loss on the adversarial
batch; the per-layer difference proxy - model, rescaled to gamma * ||w_l||, is added to every
multi-dimensional weight; the gradient is taken at the perturbed weights and applied to the
original ones. The official ADR code instead uses a SAM-style variant: it perturbs the weights
along the normalised gradient of the loss at the current weights (an extra forward/backward on
the model itself, no proxy optimizer). We follow Wu et al., whose gamma = 0.005 the paper cites.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from adr_scale.adr import _unwrap
from adr_scale.distributed import average_gradients

_EPS = 1e-20


class AdversarialWeightPerturbation:
    def __init__(self, model: nn.Module, gamma: float, proxy_lr: float) -> None:
        self.gamma = gamma
        self.proxy = copy.deepcopy(_unwrap(model))
        self.proxy_optimizer = torch.optim.SGD(self.proxy.parameters(), lr=proxy_lr)

    def compute(self, model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor],
                ) -> dict[str, torch.Tensor]:
        """Return {parameter name: perturbation} for the model's multi-dimensional weights.

        loss_fn(module) evaluates the training loss of `module` on the current (adversarial) batch.
        """
        plain = _unwrap(model)
        self.proxy.load_state_dict(plain.state_dict())
        self.proxy.train()
        self.proxy_optimizer.zero_grad(set_to_none=True)
        (-loss_fn(self.proxy)).backward()
        average_gradients(self.proxy)  # one perturbation for every rank, in one coalesced call
        self.proxy_optimizer.step()
        diff = {}
        proxy_params = dict(self.proxy.named_parameters())
        with torch.no_grad():
            for name, w in plain.named_parameters():
                if w.dim() <= 1:  # BN scales and biases are not perturbed (Wu et al.)
                    continue
                d = proxy_params[name] - w
                diff[name] = self.gamma * w.norm() / (d.norm() + _EPS) * d
        return diff


@contextmanager
def perturbed(model: nn.Module, diff: dict[str, torch.Tensor]) -> Iterator[None]:
    """Add `diff` to the weights inside the block; restore the exact original values after it."""
    params = dict(_unwrap(model).named_parameters())
    saved = {name: params[name].detach().clone() for name in diff}
    with torch.no_grad():
        for name, d in diff.items():
            params[name].add_(d)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].copy_(original)
