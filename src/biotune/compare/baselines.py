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
- ``glf`` / ``gfl``: gradual unfreezing, one block per epoch, from the head toward the stem
  (last-to-first, ULMFiT) or from the stem toward the head after a head-only first epoch
  (first-to-last); once every block is unfrozen, training goes on until early stopping.
- ``autorgn`` (surgical fine-tuning, Lee et al. 2023): at the start of every epoch, each
  parameter tensor's learning rate is the base rate times its relative gradient norm
  ‖g‖/‖w‖, averaged over the epoch's first 5 mini-batches and divided by the largest.
  Deviations from the authors' code: Adam is kept across epochs (they rebuild it each epoch,
  which resets its moments) with the rates rescaled in place, so the cosine schedule goes on;
  BatchNorm tensors are included (they skip tensors named ``bn``); a tensor with a zero weight
  norm gets multiplier 1 (the ratio is undefined).
- ``lora`` (through ``peft``): LoRA adapters of rank r (alpha = r) on the backbone's
  convolution and linear layers; the new head and the BatchNorm layers train in place (what
  ``modules_to_save`` does on copies); the rest is frozen. Grouped (e.g. depthwise) and dilated
  convolutions are left out (:func:`lora_model` returns their names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .._registry import BASELINES
from ..errors import BioTuneError
from ..models.blocks import Block, within
from ..training.groups import BN_TYPES
from ..training.regime import Regime

__all__ = ["BASELINES", "SPPenalty", "gradual_masks", "baseline_plan", "BaselineSetup", "lora_model", "LoraModel"]

RGN_BATCHES = 5


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


def gradual_masks(n_blocks: int, order: str) -> tuple[tuple[bool, ...], ...]:
    """Trainable blocks per epoch for gradual unfreezing; the last entry holds afterwards.

    ``"glf"`` (last-to-first): epoch 1 the head, then one more block per epoch toward the
    stem. ``"gfl"`` (first-to-last): epoch 1 the head, then the stem, then one more block per
    epoch toward the head.

    Example:
        >>> [''.join('x' if t else '.' for t in m) for m in gradual_masks(4, "glf")]
        ['...x', '..xx', '.xxx', 'xxxx']
        >>> [''.join('x' if t else '.' for t in m) for m in gradual_masks(4, "gfl")]
        ['...x', 'x..x', 'xx.x', 'xxxx']
    """
    if order not in ("glf", "gfl"):
        raise BioTuneError(f"`order` must be 'glf' or 'gfl', got {order!r}")
    masks = []
    for k in range(n_blocks):  # k blocks of the backbone unfrozen
        if order == "glf":
            mask = [b >= n_blocks - 1 - k for b in range(n_blocks)]
        else:
            mask = [b < k or b == n_blocks - 1 for b in range(n_blocks)]
        masks.append(tuple(mask))
    return tuple(masks)


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
    *,
    alpha: float = 0.1,
    beta: float = 0.01,
    kernels_only: bool = False,
) -> BaselineSetup:
    """The learning rates and regime of one of :data:`BASELINES`.

    Raises:
        BioTuneError: an unknown method, or ``lora`` (it changes the model: :func:`lora_model`).
    """
    return BASELINES.get(method)(model, blocks, initial, float(base_lr), alpha=alpha, beta=beta,
                                 kernels_only=kernels_only)


@BASELINES.register("ft", "full fine-tuning: every block at the base rate")
def _ft(model, blocks, initial, base_lr, **_) -> BaselineSetup:
    return BaselineSetup((base_lr,) * len(blocks))


@BASELINES.register("lp", "linear probe: the head alone")
def _lp(model, blocks, initial, base_lr, **_) -> BaselineSetup:
    return BaselineSetup((0.0,) * (len(blocks) - 1) + (base_lr,))


def _sp(norm: str):
    def plan(model, blocks, initial, base_lr, *, alpha, beta, kernels_only) -> BaselineSetup:
        penalty = SPPenalty(model, blocks, initial, alpha=alpha, beta=beta, norm=norm, kernels_only=kernels_only)
        return BaselineSetup((base_lr,) * len(blocks), Regime(penalty=penalty))

    return plan


BASELINES.add("l2sp", _sp("l2"), "FT with α·Σ(w − w⁰)² pulling the weights to their pretrained values, β·Σw² on the head")
BASELINES.add("l1sp", _sp("l1"), "FT with α·Σ|w − w⁰| pulling the weights to their pretrained values, β·Σw² on the head")


def _gradual(order: str):
    def plan(model, blocks, initial, base_lr, **_) -> BaselineSetup:
        return BaselineSetup((base_lr,) * len(blocks), Regime(masks=gradual_masks(len(blocks), order)))

    return plan


BASELINES.add("glf", _gradual("glf"), "gradual unfreezing, last block first (ULMFiT), one more block per epoch")
BASELINES.add("gfl", _gradual("gfl"), "gradual unfreezing, first block first, one more block per epoch")


@BASELINES.register("autorgn", "per-tensor rates scaled each epoch by relative gradient norm (surgical fine-tuning)")
def _autorgn(model, blocks, initial, base_lr, **_) -> BaselineSetup:
    return BaselineSetup((base_lr,) * len(blocks), Regime(rgn_batches=RGN_BATCHES))


@BASELINES.register("lora", "LoRA adapters (peft) on convolutions and linear layers, the head trained")
def _lora(model, blocks, initial, base_lr, **_) -> BaselineSetup:
    raise BioTuneError("lora changes the model: build it with lora_model() and train its two blocks")


@dataclass(frozen=True)
class LoraModel:
    """A model with LoRA adapters injected, partitioned for the trainer.

    Attributes:
        model: the same model object, adapters injected in place.
        blocks: ``(frozen, trainable)``: the frozen pretrained weights; the adapters, the
            BatchNorm layers and the head. Train with learning rates ``(0, base_lr)``.
        excluded: convolutions left without an adapter (grouped or dilated).
    """

    model: nn.Module
    blocks: tuple[Block, Block]
    excluded: tuple[str, ...]


def lora_model(model: nn.Module, blocks: Sequence[Block], rank: int = 8) -> LoraModel:
    """Inject LoRA adapters (``peft``) into the backbone's convolution and linear layers."""
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
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), model)
    modules = dict(model.named_modules())
    adapters = [n for n in modules if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B")]
    norms = [n for n, m in modules.items() if isinstance(m, BN_TYPES)]
    train_prefixes = (*head.prefixes, *norms, *adapters)
    params = dict(model.named_parameters())
    owned = lambda n: any(within(n, p) for p in train_prefixes)  # noqa: E731
    trainable = tuple(n for n in params if owned(n))
    frozen = tuple(n for n in params if not owned(n))
    frozen_prefixes = tuple(dict.fromkeys(n.rsplit(".", 1)[0] for n in frozen))
    count = lambda names: sum(params[n].numel() for n in names)  # noqa: E731
    return LoraModel(
        model,
        (Block("pretrained (frozen)", frozen_prefixes, frozen, count(frozen)),
         Block(f"lora r={rank}+norm+head", train_prefixes, trainable, count(trainable))),
        tuple(excluded),
    )
