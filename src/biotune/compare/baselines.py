"""Baseline fine-tuning methods on the shared trainer: FT, LP, L2-SP, L1-SP, G-LF, G-FL, AutoRGN.

Each method is a choice of per-block learning rates plus, where needed, a :class:`Regime`
(a loss penalty or per-epoch trainable blocks) for :meth:`FineTuner.run`, so every method uses
the same data, epochs budget, schedule and early stopping as BioTune's own runs.

- ``ft``: every block at the base learning rate.
- ``lp``: only the new head trains; the features stay frozen in eval mode.
- ``l2sp`` / ``l1sp`` (Li, Grandvalet, Davoine 2018): loss = CE + α·Σ ½‖w − w⁰‖²
  (L1-SP: α·Σ|w − w⁰|) over the pretrained weights + β·½‖w_head‖² over the new head, added to
  the loss explicitly: Adam's weight decay is not equivalent (it is scaled by the adaptive
  step). w⁰ are detached copies of the pretrained tensors.
- ``glf`` / ``gfl``: gradual unfreezing from the head toward the stem (last-to-first, ULMFiT)
  or from the stem toward the head after a head-only first epoch (first-to-last), paced over
  the epoch budget so that every block is unfrozen before its last third
  (:func:`gradual_masks`); training then goes on until early stopping.
- ``autorgn`` (surgical fine-tuning, Lee et al. 2023): at the start of every epoch, each
  parameter tensor's learning rate is the base rate times its relative gradient norm
  ‖g‖/‖w‖, averaged over the epoch's first 5 mini-batches and divided by the largest.
  Deviations from the authors' code: Adam is kept across epochs (they rebuild it each epoch,
  which resets its moments) with the rates rescaled in place, so the cosine schedule goes on;
  BatchNorm tensors are included (they skip tensors named ``bn``); a tensor with a zero weight
  norm gets multiplier 1 (the ratio is undefined).
- ``lora`` (through ``peft``): LoRA adapters of rank r on the backbone's convolution and
  linear layers; the new head and the BatchNorm layers train in place (what
  ``modules_to_save`` does on copies); the rest is frozen. Grouped (e.g. depthwise) and dilated
  convolutions are left out (:func:`lora_model` returns their names).

Each method's own knobs (:class:`Knobs`) default to what its authors use (:data:`DEFAULT_KNOBS`
says where each value comes from); ``compare --tune-baselines`` chooses them on validation
instead (:mod:`biotune.compare.tuned`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .._registry import BASELINES
from ..errors import BioTuneError
from ..models.blocks import Block, within
from ..training.groups import BN_TYPES
from ..training.regime import Regime

__all__ = ["BASELINES", "DEFAULT_KNOBS", "Knobs", "SPPenalty", "gradual_masks", "baseline_plan", "BaselineSetup",
           "default_knobs", "lora_model", "LoraModel", "mean_trainable_share"]

RGN_BATCHES = 5
GRADUAL_PACE = 2 / 3  # gradual unfreezing: every block unfrozen within the first two thirds of the budget


class SPPenalty:
    """The -SP penalty toward the pretrained weights w⁰ (L2 or L1) plus an L2 on the new head.

    Args:
        model: the model whose parameters are penalised (names must match ``initial``).
        blocks: its partition; the last block is the new head.
        initial: the pretrained state (``FineTuner.initial_state``), the source of w⁰.
        alpha, beta: weights of the w⁰ term and of the head term.
        norm: ``"l2"`` (½‖w − w⁰‖²) or ``"l1"`` (|w − w⁰|).
        kernels_only: penalise only weight tensors of 2 or more dimensions (convolution and
            linear kernels), as the authors' code does; otherwise every pretrained parameter.
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[Block],
        initial: dict[str, torch.Tensor],
        *,
        alpha: float = 0.1,
        beta: float = 0.01,
        norm: str = "l2",
        kernels_only: bool = False,
    ) -> None:
        if norm not in ("l2", "l1"):
            raise BioTuneError(f"`norm` must be 'l2' or 'l1', got {norm!r}")
        params = dict(model.named_parameters())
        head = set(blocks[-1].param_names)
        keep = lambda name: not kernels_only or params[name].dim() >= 2  # noqa: E731
        self.pretrained = [(n, initial[n].detach().clone()) for b in blocks[:-1] for n in b.param_names if keep(n)]
        self.head = [n for n in blocks[-1].param_names if keep(n)]
        assert not head & {n for n, _ in self.pretrained}
        self.alpha, self.beta, self.norm = float(alpha), float(beta), norm

    def __call__(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = torch.zeros((), device=next(iter(params.values())).device)
        for name, w0 in self.pretrained:
            diff = params[name] - w0.to(params[name].device)
            total = total + (0.5 * diff.pow(2).sum() if self.norm == "l2" else diff.abs().sum()) * self.alpha
        for name in self.head:
            total = total + 0.5 * self.beta * params[name].pow(2).sum()
        return total


@dataclass(frozen=True)
class Knobs:
    """A baseline's own settings, beside the run's base learning rate λ.

    Attributes:
        lr_scale: the method trains at ``lr_scale · λ`` (LoRA: its adapters; AutoRGN: the rate
            its relative-gradient-norm multipliers scale).
        alpha: -SP weight of the pull toward w⁰. Per element, its gradient is ``alpha·(w − w⁰)``
            (L2-SP) or ``alpha·sign(w − w⁰)`` (L1-SP): compare it with the cross-entropy
            gradient per weight (median 5e-3 on EfficientNet-Lite0 at the first step of
            Flowers-102, 64 px, batch 64).
        beta: -SP weight of the L2 term on the new head.
        rank, lora_alpha: LoRA's rank r and scaling numerator (the update is ``alpha/r · BA``).
        pace: gradual unfreezing: share of the epoch budget over which the blocks unfreeze.
    """

    lr_scale: float = 1.0
    alpha: float = 0.0
    beta: float = 0.0
    rank: int = 0
    lora_alpha: float = 0.0
    pace: float = 0.0

    def replace(self, **changes) -> "Knobs":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The knobs the method uses (zero fields left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


DEFAULT_KNOBS: dict[str, Knobs] = {
    "ft": Knobs(),
    "lp": Knobs(),
    "l2sp": Knobs(alpha=0.01, beta=0.01),
    "l1sp": Knobs(alpha=1e-4, beta=0.01),
    "glf": Knobs(pace=GRADUAL_PACE),
    "gfl": Knobs(pace=GRADUAL_PACE),
    "autorgn": Knobs(lr_scale=10.0),
    "lora": Knobs(lr_scale=10.0, rank=16, lora_alpha=16.0),
}


def default_knobs(method: str) -> Knobs:
    """The knobs :data:`DEFAULT_KNOBS` gives a baseline (plain FT's for one it does not list).

    Each method's knobs as its authors (or their reference code) set them:

    - ``l2sp``: α = β = 0.01, the defaults of the Transfer-Learning-Library's L2-SP/DELTA code
      (thuml, ``delta.py``: ``--trade-off-backbone 0.01 --trade-off-head 0.01``); Li et al. (2018)
      choose both on validation from a log grid that holds them.
    - ``l1sp``: α = 1e-4. Li et al. pick α on validation; their L2 value would swamp the loss
      here, since L1-SP's pull per weight is α itself whatever the distance: 0.1 is 20× the median
      cross-entropy gradient per weight (5e-3, measured, see :class:`Knobs`) and, with Adam's
      per-weight normalisation, holds every weight at w⁰. 1e-4 is 2 % of it: a prior, not a clamp.
    - ``autorgn``: base rate 10 λ. Lee et al. (2023) tune each method's base rate on held-out
      data; the multipliers RGN / max RGN average 0.05 over the weights (size-weighted; median 0.004,
      measured on Lite0, Flowers-102), so at FT's rate AutoRGN moves the typical weight 20× less
      than FT does. At 10 λ the size-weighted mean rate is half of FT's, the fastest tensor's 10×.
    - ``lora``: rank 16, alpha 16 (Hu et al. 2021 set alpha to the first r tried and keep it; peft's
      image-classification example uses r = alpha = 16) and the adapters at 10 λ (LoRA is run at
      a several-times higher rate than full fine-tuning: peft's example uses 5e-3); the head and
      the BatchNorm layers at λ.
    - ``glf`` / ``gfl``: every block unfrozen within the first two thirds of the budget
      (ULMFiT unfreezes one layer group per epoch, then trains all of them; paced here so a short
      budget still trains every block for its last third).
    - ``ft`` / ``lp``: λ itself.
    """
    return DEFAULT_KNOBS.get(method, Knobs())


def gradual_masks(n_blocks: int, order: str, epochs: int, pace: float = GRADUAL_PACE) -> tuple[tuple[bool, ...], ...]:
    """Trainable blocks per epoch for gradual unfreezing; the last entry holds afterwards.

    Epoch 1 trains the head alone; the backbone's ``n_blocks − 1`` blocks are then unfrozen at
    an even pace (rounded up), so that all of them train by epoch ``m + 1``, ``m = max(1, ⌊pace·epochs⌋)``
    (with the default pace, before the budget's last third begins). ``"glf"`` (last-to-first)
    unfreezes from the head toward the stem; ``"gfl"`` (first-to-last) from the stem toward the
    head. A budget shorter than the blocks unfreezes several blocks per epoch; a longer one
    keeps some blocks frozen for more than one epoch. One epoch: every block from the start.

    Example:
        >>> [''.join('x' if t else '.' for t in m) for m in gradual_masks(4, "glf", 4)]
        ['...x', '.xxx', 'xxxx']
        >>> [''.join('x' if t else '.' for t in m) for m in gradual_masks(4, "gfl", 6)]
        ['...x', 'x..x', 'xx.x', 'xxxx']
        >>> len(gradual_masks(10, "glf", 30))  # all 10 blocks train from epoch 19 of 30
        19
    """
    if order not in ("glf", "gfl"):
        raise BioTuneError(f"`order` must be 'glf' or 'gfl', got {order!r}")
    if epochs < 1 or not 0.0 < pace <= 1.0:
        raise BioTuneError(f"gradual unfreezing needs epochs ≥ 1 and a pace in (0, 1], got {epochs} and {pace}")
    backbone = n_blocks - 1
    if epochs == 1 or backbone == 0:
        return ((True,) * n_blocks,)
    last = max(1, int(pace * epochs))  # epoch index (0-based) from which every block trains
    masks = []
    for e in range(last + 1):
        k = math.ceil(backbone * e / last)  # backbone blocks unfrozen in epoch e + 1
        if order == "glf":
            mask = [b >= n_blocks - 1 - k for b in range(n_blocks)]
        else:
            mask = [b < k or b == n_blocks - 1 for b in range(n_blocks)]
        masks.append(tuple(mask))
        if k == backbone:  # every block trains: this mask holds from here on
            break
    return tuple(masks)


def mean_trainable_share(shares: Sequence[float], epochs_run: int) -> float:
    """The share trained averaged over the epochs run: ``shares[e]`` in epoch e + 1, the last after."""
    if epochs_run < 1:
        return float(shares[-1])
    return float(np.mean([shares[min(e, len(shares) - 1)] for e in range(epochs_run)]))


@dataclass(frozen=True)
class BaselineSetup:
    """What a baseline hands the trainer: per-block learning rates and a regime."""

    lrs: tuple[float, ...]
    regime: Regime | None = None

    @property
    def trainable(self) -> tuple[bool, ...]:
        """Blocks trainable at some point of the run."""
        return tuple(lr > 0 for lr in self.lrs)


def baseline_plan(
    method: str,
    model: nn.Module,
    blocks: Sequence[Block],
    initial: dict[str, torch.Tensor],
    base_lr: float,
    knobs: Knobs | None = None,
    *,
    epochs: int,
    kernels_only: bool = False,
) -> BaselineSetup:
    """The learning rates and regime of one of :data:`BASELINES`.

    Args:
        knobs: the method's settings; :data:`DEFAULT_KNOBS` when ``None``.
        epochs: the run's epoch budget (gradual unfreezing is paced over it).
        kernels_only: -SP: penalise only kernels (tensors of 2 or more dimensions).

    Raises:
        BioTuneError: an unknown method, or ``lora`` (it changes the model: :func:`lora_model`).
    """
    plan = BASELINES.get(method)
    knobs = default_knobs(method) if knobs is None else knobs
    return plan(model, blocks, initial, float(base_lr) * knobs.lr_scale, knobs=knobs, epochs=int(epochs),
                kernels_only=kernels_only)


@BASELINES.register("ft", "full fine-tuning: every block at the base rate")
def _ft(model, blocks, initial, lr, **_) -> BaselineSetup:
    return BaselineSetup((lr,) * len(blocks))


@BASELINES.register("lp", "linear probe: the head alone")
def _lp(model, blocks, initial, lr, **_) -> BaselineSetup:
    return BaselineSetup((0.0,) * (len(blocks) - 1) + (lr,))


def _sp(norm: str):
    def plan(model, blocks, initial, lr, *, knobs, kernels_only, **_) -> BaselineSetup:
        penalty = SPPenalty(model, blocks, initial, alpha=knobs.alpha, beta=knobs.beta, norm=norm,
                            kernels_only=kernels_only)
        return BaselineSetup((lr,) * len(blocks), Regime(penalty=penalty))

    return plan


BASELINES.add("l2sp", _sp("l2"), "FT with α·Σ(w − w⁰)² pulling the weights to their pretrained values, β·Σw² on the head")
BASELINES.add("l1sp", _sp("l1"), "FT with α·Σ|w − w⁰| pulling the weights to their pretrained values, β·Σw² on the head")


def _gradual(order: str):
    def plan(model, blocks, initial, lr, *, knobs, epochs, **_) -> BaselineSetup:
        masks = gradual_masks(len(blocks), order, epochs, knobs.pace or GRADUAL_PACE)
        return BaselineSetup((lr,) * len(blocks), Regime(masks=masks))

    return plan


BASELINES.add("glf", _gradual("glf"), "gradual unfreezing, last block first (ULMFiT), paced over the budget")
BASELINES.add("gfl", _gradual("gfl"), "gradual unfreezing, first block first, paced over the budget")


@BASELINES.register("autorgn", "per-tensor rates scaled each epoch by relative gradient norm (surgical fine-tuning)")
def _autorgn(model, blocks, initial, lr, **_) -> BaselineSetup:
    return BaselineSetup((lr,) * len(blocks), Regime(rgn_batches=RGN_BATCHES))


@BASELINES.register("lora", "LoRA adapters (peft) on convolutions and linear layers, the head trained")
def _lora(model, blocks, initial, lr, **_) -> BaselineSetup:
    raise BioTuneError("lora changes the model: build it with lora_model() and train its blocks")


@dataclass(frozen=True)
class LoraModel:
    """A model with LoRA adapters injected, partitioned for the trainer.

    Attributes:
        model: the same model object, adapters injected in place.
        blocks: ``(frozen, norm+head, adapters)``: the frozen pretrained weights; the BatchNorm
            layers and the new head; the adapters. Train with learning rates
            ``(0, λ, lr_scale·λ)`` (:meth:`lrs`).
        excluded: convolutions left without an adapter (grouped or dilated).
    """

    model: nn.Module
    blocks: tuple[Block, Block, Block]
    excluded: tuple[str, ...]

    @staticmethod
    def lrs(base_lr: float, knobs: Knobs) -> tuple[float, float, float]:
        """Per-block rates: frozen, the norms and head at λ, the adapters at ``lr_scale·λ``."""
        return (0.0, float(base_lr), float(base_lr) * knobs.lr_scale)


def lora_model(model: nn.Module, blocks: Sequence[Block], rank: int = 16, alpha: float | None = None) -> LoraModel:
    """Inject LoRA adapters (``peft``) into the backbone's convolution and linear layers.

    ``alpha`` is LoRA's scaling numerator (the update is ``alpha/rank · BA``); ``rank`` when ``None``.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise BioTuneError("the lora baseline needs peft: pip install 'biotune[lora]'") from None
    if rank < 1:
        raise BioTuneError(f"`lora_rank` must be at least 1, got {rank}")
    head = blocks[-1]
    targets, excluded = [], []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or head.owns(name):
            continue
        if isinstance(module, nn.Conv2d) and (module.groups > 1 or module.dilation != (1, 1)):
            excluded.append(name)
        else:
            targets.append(name)
    if not targets:
        raise BioTuneError("no convolution or linear layer of the backbone can take a LoRA adapter")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=float(rank if alpha is None else alpha),
                                       target_modules=targets), model)
    modules = dict(model.named_modules())
    adapters = tuple(n for n in modules if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B"))
    norms = tuple(n for n, m in modules.items() if isinstance(m, BN_TYPES))
    params = dict(model.named_parameters())

    def owned(prefixes) -> tuple[str, ...]:
        return tuple(n for n in params if any(within(n, p) for p in prefixes))

    adapted, tuned = owned(adapters), owned((*head.prefixes, *norms))
    frozen = tuple(n for n in params if n not in set(adapted) | set(tuned))
    frozen_prefixes = tuple(dict.fromkeys(n.rsplit(".", 1)[0] for n in frozen))
    count = lambda names: sum(params[n].numel() for n in names)  # noqa: E731
    return LoraModel(
        model,
        (Block("pretrained (frozen)", frozen_prefixes, frozen, count(frozen)),
         Block("norm+head", (*head.prefixes, *norms), tuned, count(tuned)),
         Block(f"lora r={rank}", adapters, adapted, count(adapted))),
        tuple(excluded),
    )
