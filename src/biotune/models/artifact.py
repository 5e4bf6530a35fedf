"""The fine-tuned model as a folder plain timm loads: ``model.safetensors``, ``config.json``
(timm's Hugging Face layout, written by ``timm.models.save_for_hf``) and a ``README.md``
model card.

``timm.create_model("local-dir:<folder>", pretrained=True)`` rebuilds it with no BioTune
import; :func:`load_model` does the same and adds the preprocessing used in training
(resize, normalisation) and the class names.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._files import atomic_write_bytes
from ..errors import BioTuneError
from .build import load_state_dict_file

__all__ = ["ModelCard", "LoadedModel", "save_model_dir", "load_model", "resolve_model_dir", "MODEL_DIR"]

MODEL_DIR = "model"  # inside a run directory


@dataclass(frozen=True)
class ModelCard:
    """What the model card and ``config.json["biotune"]`` say about a saved model.

    Attributes:
        architecture: timm model name it was built from (e.g. ``efficientnet_lite0``).
        classes: class names, in label order.
        image_size: input side in pixels.
        read_size: side image files were read at (short side, centre crop) before the final
            resize to ``image_size``, as in training.
        mean, std: input normalisation.
        dataset: the dataset it was fine-tuned on.
        blocks: per-block rows (``name``, ``trainable``, ``lr_multiplier``, ``num_params``).
        metrics: e.g. ``val_accuracy``, ``test_accuracy`` of the kept run.
        extra: anything else to record (weights source, strategy, seed).
    """

    architecture: str
    classes: tuple[str, ...]
    image_size: int
    read_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dataset: str = ""
    blocks: tuple[dict, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from .._version import __version__

        return {"version": __version__, "dataset": self.dataset, "image_size": self.image_size,
                "read_size": self.read_size, "blocks": list(self.blocks), "metrics": dict(self.metrics),
                **self.extra}

    def markdown(self) -> str:
        lines = [f"# {self.architecture} fine-tuned on {self.dataset or 'a custom dataset'} with BioTune", "",
                 f"- classes ({len(self.classes)}): {', '.join(self.classes[:20])}{' …' if len(self.classes) > 20 else ''}",
                 f"- input: {self.image_size}×{self.image_size} RGB, mean {list(self.mean)}, std {list(self.std)}"]
        for k, v in self.metrics.items():
            lines.append(f"- {k.replace('_', ' ')}: {100 * v:.2f}%" if isinstance(v, float) and v <= 1 else f"- {k}: {v}")
        for k, v in self.extra.items():
            lines.append(f"- {k.replace('_', ' ')}: {v}")
        if self.blocks:
            lines += ["", "| block | trainable | LR multiplier | parameters |", "|---|---|---|---|"]
            for b in self.blocks:
                mult = f"{b['lr_multiplier']:.3g}" if b["trainable"] else "frozen"
                lines.append(f"| {b['name']} | {'yes' if b['trainable'] else 'no'} | {mult} | {b['num_params']:,} |")
        lines += ["", "Load it with timm alone:", "", "```python", "import timm",
                  'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()', "```",
                  "", "or with BioTune: `biotune predict --model PATH/TO/THIS/FOLDER image.jpg`.", ""]
        return "\n".join(lines)


def save_model_dir(folder: str | Path, weights: str | Path | dict[str, torch.Tensor], card: ModelCard) -> Path:
    """Write the model folder atomically (a temporary folder renamed into place).

    Args:
        folder: the folder to (re)write, e.g. ``<run-dir>/model``.
        weights: a state dict or the ``.safetensors`` file of one, for ``card.architecture``
            with ``len(card.classes)`` outputs; loaded strictly.

    Raises:
        BioTuneError: the weights do not fit the architecture.
    """
    import timm
    from timm.models import save_for_hf

    folder = Path(folder)
    state = load_state_dict_file(weights) if isinstance(weights, (str, Path)) else weights
    model = timm.create_model(card.architecture, pretrained=False, num_classes=len(card.classes))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BioTuneError(f"weights do not fit {card.architecture} with {len(card.classes)} classes: {err}") from None
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    data_config = {"input_size": (3, card.image_size, card.image_size), "mean": tuple(card.mean),
                   "std": tuple(card.std), "interpolation": "bilinear", "crop_pct": 1.0}
    extra = {}
    if "data_config" in inspect.signature(save_for_hf).parameters:
        extra["data_config"] = data_config
    else:  # older timm has no data_config: it writes the model's pretrained_cfg, so the values go there
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **data_config}
    save_for_hf(model, tmp, model_config={"label_names": list(card.classes), "biotune": card.to_dict()},
                safe_serialization=True, **extra)
    atomic_write_bytes(tmp / "README.md", card.markdown().encode())
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def resolve_model_dir(path: str | Path) -> Path:
    """``path/model`` when it holds a model (a run directory), else ``path`` itself.

    Raises:
        BioTuneError: neither holds a saved model.
    """
    path = Path(path).expanduser()
    for candidate in (path / MODEL_DIR, path):
        if (candidate / "config.json").is_file():
            return candidate
    if not path.exists():
        raise BioTuneError(f"--model {path} does not exist")
    raise BioTuneError(f"--model {path}: no saved model there (expected {path}/config.json or "
                       f"{path / MODEL_DIR}/config.json; a search writes it when its final phase ends)")


@dataclass(frozen=True)
class LoadedModel:
    """A saved model ready to predict: unpacks as ``model, preprocess, classes``.

    Attributes:
        model: the network in eval mode.
        preprocess: uint8 images (one H×W×C / H×W array, an N×H×W×C batch, or a PIL image) →
            float tensor N×3×S×S, resized and normalised as in training.
        classes: class names in label order.
        image_size, read_size: input side, and the side image files are read at.
        folder: where it was loaded from.
    """

    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    classes: tuple[str, ...]
    image_size: int
    read_size: int
    folder: Path

    def __iter__(self):
        return iter((self.model, self.preprocess, self.classes))


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder (or a run directory's ``model/``) with timm's ``local-dir:`` loader.

    Raises:
        BioTuneError: no model there, a malformed ``config.json``, or weights that do not
            match it.

    Example:
        >>> model, preprocess, classes = load_model("runs/demo")          # doctest: +SKIP
        >>> model(preprocess(image)).softmax(-1)                          # doctest: +SKIP
    """
    import timm

    folder = resolve_model_dir(path)
    try:
        config = json.loads((folder / "config.json").read_text())
        cfg = config["pretrained_cfg"]
        num_classes = int(config["num_classes"])
        size = int(cfg["input_size"][-1])
        mean, std = tuple(float(x) for x in cfg["mean"]), tuple(float(x) for x in cfg["std"])
        config["architecture"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise BioTuneError(f"{folder}/config.json is not a timm model config ({type(err).__name__}: {err})") from None
    if not (folder / "model.safetensors").is_file():
        raise BioTuneError(f"{folder}/model.safetensors is missing")
    classes = tuple(str(c) for c in config.get("label_names") or range(num_classes))
    if len(classes) != num_classes:
        raise BioTuneError(f"{folder}/config.json: {len(classes)} label names for {num_classes} classes")
    read_size = int(config.get("biotune", {}).get("read_size", size))
    try:
        # timm builds the architecture from config.json; the weights are then loaded strictly here,
        # since timm's own pretrained loading drops a classifier of another size without a word.
        model = timm.create_model(f"local-dir:{folder}", pretrained=False)
        model.load_state_dict(load_state_dict_file(folder / "model.safetensors"), strict=True)
    except (RuntimeError, ValueError, KeyError, OSError, BioTuneError) as err:
        raise BioTuneError(f"{folder}/model.safetensors does not match its config.json "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:300]})") from None
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise BioTuneError(f"{folder}/config.json: num_classes {num_classes} but the model built from it has "
                           f"{model.num_classes} outputs")
    model = model.to(device).eval()

    def preprocess(images) -> torch.Tensor:
        return _to_tensor(images, size, mean, std)

    return LoadedModel(model, preprocess, classes, size, read_size, folder)


def _to_tensor(images, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    from ..data.dataset import preprocess

    if hasattr(images, "convert"):  # a PIL image
        from ..data.readers import fit_image

        images = fit_image(images, size)
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise BioTuneError(f"images must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None, ..., None]
    elif arr.ndim == 3:
        arr = arr[None] if arr.shape[-1] in (1, 3, 4) else arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise BioTuneError(f"images must be H×W×C or N×H×W×C with C in 1, 3 (grey, RGB) or 4 (RGBA), got shape {arr.shape}")
    return preprocess(arr[..., :3], image_size=size, mean=tuple(mean), std=tuple(std))
