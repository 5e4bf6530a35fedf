"""How a baseline departs from plain per-block fine-tuning: a loss penalty, per-epoch trainable
blocks, a starting state, AutoRGN's per-tensor learning rates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["Regime", "rgn_multipliers", "rescale_by_rgn"]


@dataclass(frozen=True)
class Regime:
    """How a baseline departs from plain per-block fine-tuning (see :mod:`biotune.compare.baselines`).

    Attributes:
        penalty: a term added to the loss at every step, computed from the model (L2-SP,
            L1-SP); its value is not part of the reported training loss.
        masks: the trainable blocks of each epoch (index epoch − 1; the last one holds for
            the epochs after). Blocks must have a positive learning rate to be trainable.
            Early stopping counts only from the epoch where the mask stops changing.
        init_state: start from these weights instead of the pretrained ones with a new head
            (LP-FT's second stage starts from the probed head); the prefix cache is not used.
        epochs: this run's epoch budget instead of the configuration's (the schedule spans it).
        rgn_batches: AutoRGN when positive: one parameter group per tensor, and at the start
            of every epoch each tensor's learning rate is scaled by its relative gradient
            norm ‖g‖/‖w‖, averaged over this many mini-batches and divided by the largest
            (see :func:`rgn_multipliers`).
    """

    penalty: Callable[[nn.Module], torch.Tensor] | None = None
    masks: tuple[tuple[bool, ...], ...] | None = None
    rgn_batches: int = 0
    init_state: dict[str, torch.Tensor] | None = None
    epochs: int | None = None


def rgn_multipliers(ratios: dict[str, float]) -> dict[str, float]:
    """AutoRGN learning-rate multipliers: relative gradient norms divided by the largest.

    A tensor with a zero weight norm (e.g. a zero-initialised bias) has no defined ratio; it is
    given ``inf`` by the caller and the multiplier 1. A zero gradient gives the smallest
    positive multiplier (1e-12) rather than 0, so every multiplier is in (0, 1].
    """
    finite = [r for r in ratios.values() if math.isfinite(r)]
    top = max(finite, default=0.0)
    out = {}
    for name, r in ratios.items():
        out[name] = 1.0 if not math.isfinite(r) or top <= 0 else max(r / top, 1e-12)
    return out


def rescale_by_rgn(optimizer, batch_loss, batches) -> dict[str, float]:
    """AutoRGN's step at the start of an epoch: average ‖g‖/‖w‖ per tensor over ``batches`` (no
    optimizer step), then rescale each group's learning rate by :func:`rgn_multipliers`.

    ``batch_loss(idx)`` returns the objective of the mini-batch of rows ``idx``; the optimizer
    has one group per tensor. The learning rates stay on the cosine schedule: a group's rate is
    divided by its previous multiplier and multiplied by the new one.
    """
    sums: dict[str, float] = {}
    for idx in batches:
        optimizer.zero_grad(set_to_none=True)
        batch_loss(idx).backward()
        for group in optimizer.param_groups:
            p = group["params"][0]
            if p.grad is None:
                continue
            w = float(p.detach().norm())
            ratio = float(p.grad.detach().norm()) / w if w > 0 else math.inf
            sums[group["name"]] = sums.get(group["name"], 0.0) + ratio
    optimizer.zero_grad(set_to_none=True)
    mults = rgn_multipliers({n: v / len(batches) for n, v in sums.items()})
    for group in optimizer.param_groups:
        if group["name"] in mults:
            new = mults[group["name"]]
            group["lr"] = group["lr"] / group.get("rgn", 1.0) * new
            group["rgn"] = new
    return mults
