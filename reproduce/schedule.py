"""Learning-rate schedule and optimizer parameter groups as the official solvers define them.

Poly schedule (Caffe ``lr_policy: "poly"``, TF ``polynomial_decay`` with end 0):
``lr(it) = base_lr * (1 - it / max_iter) ** power`` for the update made at iteration ``it``
(0-based). It is a pure function of the iteration, so resuming needs no scheduler state.

Parameter groups follow Caffe's per-blob ``lr_mult`` / ``decay_mult``: ordered rules, the first
whose ``match`` regex (``re.search`` on the parameter name) and optional ``max_ndim`` fit wins;
unmatched parameters get ``lr_mult 1, decay_mult 1``. Frozen parameters (``requires_grad`` False,
e.g. v2's BatchNorm) are left out.

Optimizers:

- ``"sgd"``: ``torch.optim.SGD`` (TF ``MomentumOptimizer``: ``v = m v + g; w -= lr v``).
- ``"caffe_sgd"``: Caffe's ``SGDSolver``: ``v = m v + lr g; w -= v``. The two differ only while
  the learning rate changes (the poly schedule), by the ratio of consecutive rates.

Weight decay is L2 added to the gradient before momentum in both (``decay_mult * weight_decay * w``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["poly_lr", "param_groups", "CaffeSGD", "build_optimizer", "set_lr"]


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float = 0.9) -> float:
    """``base_lr * (1 - iteration / max_iter) ** power`` (0 at and after ``max_iter``)."""
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    return base_lr * max(0.0, 1.0 - iteration / max_iter) ** power


def param_groups(model: nn.Module, rules: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Group trainable parameters by the first matching rule; each group carries ``lr_mult``/``decay_mult``."""
    compiled = [(re.compile(r.get("match", ".*")), r.get("max_ndim"), float(r.get("lr_mult", 1.0)),
                 float(r.get("decay_mult", 1.0))) for r in rules]
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr_mult, decay_mult = 1.0, 1.0
        for pattern, max_ndim, lm, dm in compiled:
            if pattern.search(name) and (max_ndim is None or p.ndim <= max_ndim):
                lr_mult, decay_mult = lm, dm
                break
        g = groups.setdefault((lr_mult, decay_mult),
                              {"params": [], "names": [], "lr_mult": lr_mult, "decay_mult": decay_mult})
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


class CaffeSGD(torch.optim.Optimizer):
    """Caffe ``SGDSolver`` update: ``v = momentum * v + lr * (g + wd * w)``; ``w -= v``."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if "history" not in state:
                    state["history"] = torch.zeros_like(p)
                v = state["history"]
                v.mul_(m).add_(g, alpha=lr)
                p.sub_(v)


def build_optimizer(
    model: nn.Module, *, kind: str, base_lr: float, momentum: float, weight_decay: float,
    rules: Sequence[Mapping[str, Any]] = (),
) -> torch.optim.Optimizer:
    """The configured optimizer over :func:`param_groups` (group ``lr`` is set by :func:`set_lr`)."""
    groups = param_groups(model, rules)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["weight_decay"] = weight_decay * g["decay_mult"]
        g["lr"] = base_lr * g["lr_mult"]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=base_lr, momentum=momentum)
    if kind == "caffe_sgd":
        return CaffeSGD(groups, lr=base_lr, momentum=momentum)
    raise ValueError(f"optimizer must be 'sgd' or 'caffe_sgd', got {kind!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr * lr_mult``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"]
