"""Which parameters a run trains: optimizer groups per block by parameter name (as timm's
``param_groups_layer_decay``), ``requires_grad`` and train/eval mode per block."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import BioTuneError
from ..models.blocks import Block

__all__ = ["BN_TYPES", "param_groups", "set_trainable"]

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def param_groups(model: nn.Module, blocks: Sequence[Block], lrs: Sequence[float]) -> list[dict]:
    """Optimizer parameter groups, one per trainable block, addressed by parameter name.

    Frozen blocks (LR 0) are left out. Each group carries ``name`` (the block) and ``lr``;
    pass the list to any ``torch.optim`` optimizer.

    Example:
        >>> import timm, torch
        >>> from biotune.models import partition_model
        >>> m = timm.create_model("resnet18", num_classes=3)
        >>> blocks = partition_model(m, "stage")
        >>> groups = param_groups(m, blocks, [0, 0, 0, 0, 1e-4, 1e-3])
        >>> opt = torch.optim.Adam(groups)
        >>> [g["name"] for g in opt.param_groups]
        ['layer4', 'fc']
    """
    if len(lrs) != len(blocks):
        raise BioTuneError(f"got {len(lrs)} learning rates for {len(blocks)} blocks")
    params = dict(model.named_parameters())
    groups = []
    for block, lr in zip(blocks, lrs):
        if lr > 0:
            groups.append({"name": block.name, "lr": float(lr), "params": [params[n] for n in block.param_names]})
    return groups


def set_trainable(model: nn.Module, blocks: Sequence[Block], mask: Sequence[bool], *, train_bn: bool = True,
                  modules: Sequence[Sequence[nn.Module]] | None = None,
                  params: dict[str, nn.Parameter] | None = None) -> None:
    """Put ``model`` in train mode with only the blocks ``mask`` marks trainable: frozen blocks get
    no gradients and run in eval mode (so the frozen-prefix cache is exact); with ``train_bn``
    off, BatchNorm layers of trainable blocks run in eval mode too (Lightning's ``train_bn``).

    ``modules`` (each block's modules) and ``params`` (the named parameters) may be passed
    precomputed: this runs at every epoch.
    """
    if modules is None:
        named = dict(model.named_modules())
        modules = [[named[p] for p in b.prefixes if p in named] for b in blocks]
    params = dict(model.named_parameters()) if params is None else params
    model.train()
    for block, block_modules, trainable in zip(blocks, modules, mask):
        for name in block.param_names:
            params[name].requires_grad_(trainable)
        for module in block_modules:
            if not trainable:
                module.eval()
            elif not train_bn:
                for sub in module.modules():
                    if isinstance(sub, BN_TYPES):
                        sub.eval()
