"""A model cut into blocks: the unit the genome freezes or trains at one learning rate.

The partition uses timm's own grouping (``group_matcher`` + ``group_parameters``): coarse
for ``stage``, fine for ``block``, the classifier head always last. No tables per
architecture; a model without a matcher takes a partition by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..errors import BioTuneError

__all__ = ["Block", "partition_model", "classifier_name", "trainable_percent", "within"]


@dataclass(frozen=True)
class Block:
    """One functional block of a model: the unit that is frozen or trained at one LR.

    Attributes:
        name: readable name, the module prefixes joined by ``+`` (e.g. ``"conv1+bn1"``).
        prefixes: module-name prefixes whose parameters and buffers form the block.
        param_names: names of the block's parameters, in model order.
        num_params: number of scalar parameters.
    """

    name: str
    prefixes: tuple[str, ...]
    param_names: tuple[str, ...]
    num_params: int

    def owns(self, name: str) -> bool:
        """True when a module or parameter ``name`` lies inside one of the block's prefixes."""
        return any(within(name, p) for p in self.prefixes)


def trainable_percent(blocks: Sequence[Block], mask: Sequence[bool]) -> float:
    """Share of the partition's parameters inside the blocks ``mask`` marks trainable, in %."""
    total = sum(b.num_params for b in blocks)
    return 100.0 * sum(b.num_params for b, m in zip(blocks, mask) if m) / total


def classifier_name(model: nn.Module) -> str:
    """Dotted name of the classifier (head) module, e.g. ``"fc"`` or ``"head.fc"``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier")
    modules = dict(model.named_modules())
    if isinstance(name, str) and name in modules:
        return name
    if hasattr(model, "get_classifier"):
        target = model.get_classifier()
        for mod_name, mod in modules.items():
            if mod is target and mod_name:
                return mod_name
    raise BioTuneError(f"{type(model).__name__}: cannot find the classifier head module")


def within(name: str, prefix: str) -> bool:
    """True when the module or parameter ``name`` is ``prefix`` or lies inside it."""
    return name == prefix or name.startswith(prefix + ".")


def _module_prefixes(names: Sequence[str], all_names: Sequence[str]) -> tuple[str, ...]:
    """Smallest set of module prefixes that covers ``names`` and nothing else of ``all_names``."""
    inside = set(names)
    outside = [n for n in all_names if n not in inside]
    prefixes: list[str] = []
    for name in names:
        if any(within(name, p) for p in prefixes):
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if not any(within(o, prefix) for o in outside):
                prefixes.append(prefix)
                break
    return tuple(prefixes)


def _make_block(param_names: Sequence[str], prefixes: tuple[str, ...], params: dict[str, nn.Parameter]) -> Block:
    return Block(
        name="+".join(prefixes),
        prefixes=prefixes,
        param_names=tuple(param_names),
        num_params=sum(params[n].numel() for n in param_names),
    )


def partition_model(
    model: nn.Module,
    granularity: str = "stage",
    *,
    partition: Sequence[str] | None = None,
) -> tuple[Block, ...]:
    """Cut a model into ordered blocks, stem first and the classifier head last.

    Uses timm's ``group_matcher(coarse=...)`` with ``timm.models.group_parameters``:
    coarse grouping for ``"stage"``, fine for ``"block"``. The classifier head is always a
    block of its own. Every parameter belongs to exactly one block.

    Args:
        model: a timm model.
        granularity: ``"stage"`` or ``"block"``.
        partition: optional hand-made partition, one string of ``+``-joined module-name
            prefixes per block; parameters are assigned to the longest matching prefix.

    Raises:
        BioTuneError: the model has no ``group_matcher`` and no partition is given, or the
            given partition leaves parameters out or names unknown modules.

    Example:
        >>> import timm
        >>> blocks = partition_model(timm.create_model("resnet50"), "stage")
        >>> [b.name for b in blocks]
        ['conv1+bn1', 'layer1', 'layer2', 'layer3', 'layer4', 'fc']
    """
    from timm.models import group_parameters

    if granularity not in ("stage", "block"):
        raise BioTuneError(f"`granularity` must be 'stage' or 'block', got {granularity!r}")
    params = dict(model.named_parameters())
    names = list(params)
    head = classifier_name(model)
    head_names = [n for n in names if within(n, head)]
    if partition is not None:
        return _manual_partition(model, partition, params, head, head_names)
    matcher_fn = getattr(model, "group_matcher", None)
    if matcher_fn is None:
        raise BioTuneError(
            f"{type(model).__name__} has no timm group_matcher, so BioTune cannot cut it into blocks: "
            "pass a partition by hand, a list of module-name prefixes in order, one per block, "
            "several joined by '+' (CLI: --partition 'conv1+bn1,layer1,layer2,fc'; "
            "API: ModelConfig(partition=(...)))"
        )
    groups = group_parameters(model, matcher_fn(coarse=granularity == "stage"))
    blocks = []
    for gid in sorted(groups):
        members = [n for n in groups[gid] if not within(n, head)]
        if members:
            blocks.append(_make_block(members, _module_prefixes(members, names), params))
    blocks.append(_make_block(head_names, (head,), params))
    return tuple(blocks)


def _manual_partition(model, partition, params, head, head_names) -> tuple[Block, ...]:
    modules = dict(model.named_modules())
    specs = [tuple(p.strip() for p in spec.split("+") if p.strip()) for spec in partition]
    for spec in specs:
        for prefix in spec:
            if prefix not in modules and prefix not in params:
                raise BioTuneError(f"partition prefix {prefix!r} is not a module of {type(model).__name__}")
    if not any(head in spec for spec in specs):
        specs.append((head,))
    owner: dict[str, int] = {}
    for name in params:
        best = None
        for i, spec in enumerate(specs):
            for prefix in spec:
                if within(name, prefix) and (best is None or len(prefix) > best[1]):
                    best = (i, len(prefix))
        if best is not None:
            owner[name] = best[0]
    left = [n for n in params if n not in owner]
    if left:
        raise BioTuneError(
            f"the partition leaves {len(left)} parameter(s) in no block (e.g. {', '.join(left[:3])}); "
            "add their module prefixes"
        )
    blocks = []
    for i, spec in enumerate(specs):
        members = [n for n in params if owner[n] == i]
        if not members:
            raise BioTuneError(f"partition block {'+'.join(spec)!r} holds no parameters")
        blocks.append(_make_block(members, spec, params))
    return tuple(blocks)
