"""Predictions of a saved model on new images: files, folders (recursively), ``.npz`` arrays.

Every input is read and checked before anything is predicted, so a bad input stops the
call with one message and nothing written. A folder laid out as an ImageFolder whose class
sub-folders are the model's classes also yields the true labels (and so an accuracy), as
does an ``.npz`` with labels.
"""

from __future__ import annotations

import csv
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .._files import atomic_write_bytes
from ..data.folders import IMAGE_EXTENSIONS, split_folders, visible_dirs
from ..data.listing import ReadOptions
from ..data.readers import read_image
from ..data.tables import is_table, read_table
from ..errors import BioTuneError
from .artifact import LoadedModel, load_model

__all__ = ["Inputs", "Predictions", "read_inputs", "predict", "write_predictions_csv"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """Images to predict on: uint8 N×H×W×C, a name per image, true labels where known (−1: unknown)."""

    images: np.ndarray
    names: tuple[str, ...]
    labels: np.ndarray


@dataclass(frozen=True)
class Predictions:
    """Top-k classes and probabilities per image, in input order.

    Attributes:
        names: one per image (file path, or ``file.npz[i]``).
        indices, probabilities: N×k, best first.
        classes: the model's class names.
        labels: true labels (−1 where unknown).
    """

    names: tuple[str, ...]
    indices: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]
    labels: np.ndarray

    @property
    def accuracy(self) -> float | None:
        """Top-1 accuracy over the images with a known label; ``None`` when none has one."""
        known = self.labels >= 0
        return float((self.indices[known, 0] == self.labels[known]).mean()) if known.any() else None


def _npz_images(path: Path, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in ("x_test", "x") if k in z.files), None)
            if key is None:
                raise BioTuneError(f"{path}: no image array (expected x_test or x)")
            x = z[key]
            label_key = {"x_test": "y_test", "x": "y"}[key]
            y = z[label_key].astype(np.int64).reshape(-1) if label_key in z.files else None
            npz_classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
    except BioTuneError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise BioTuneError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    if x.dtype != np.uint8:
        raise BioTuneError(f"{path}: images must be uint8 (0..255), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or not len(x):
        raise BioTuneError(f"{path}: images must be N×H×W×C with C in 1, 3 or 4, got shape {x.shape}")
    if y is None or len(y) != len(x) or (npz_classes is not None and list(npz_classes) != list(classes)):
        y = np.full(len(x), -1)  # labels of other classes (or none) cannot score this model
    return x[..., :3], y


def read_inputs(paths: Sequence[str | Path], classes: Sequence[str], read_size: int,
                options: ReadOptions | None = None) -> Inputs:
    """Read image files, folders (recursively), ``.npz`` files and tables of image paths into one batch.

    Non-image files inside a folder are skipped with a warning; a named file that cannot be
    read as an image is an error. A folder of split folders (``train/``, ``valid/``…) labels each
    image by the class folder inside its split folder. A table's rows are named by their id (the
    image column's value); with a label column (``options``), they carry labels.

    Raises:
        BioTuneError: a missing path, an unreadable image or ``.npz``, a wrong channel count,
            or no image at all.
    """
    if not paths:
        raise BioTuneError("no input given: name image files, folders or .npz files")
    class_index = {c: i for i, c in enumerate(classes)}
    images, names, labels = [], [], []

    def add(arr: np.ndarray, name: str, label: int) -> None:
        images.append(arr)
        names.append(name)
        labels.append(label)

    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise BioTuneError(f"input {raw} does not exist")
        if is_table(path) and path.is_file():
            listing = read_table(path, options or ReadOptions(), labels_required=False)
            for items in listing.splits.values():
                for ref, label, row_id in zip(items.refs, items.labels, items.ids):
                    known = label >= 0 and listing.classes[label] in class_index
                    add(read_image(ref, read_size), row_id, class_index[listing.classes[label]] if known else -1)
        elif path.suffix == ".npz" and path.is_file():
            x, y = _npz_images(path, classes)
            for i in range(len(x)):
                add(np.repeat(x[i], 3, axis=-1) if x.shape[-1] == 1 else x[i], f"{path}[{i}]", int(y[i]))
        elif path.is_file():
            add(read_image(path, read_size), str(path), -1)
        else:
            splits = split_folders(path)  # images under train/<class>/... are labelled by <class>
            tops = [p for s in splits.values() for p in visible_dirs(s)] if splits else visible_dirs(path)
            imagefolder = bool(tops) and all(p.name in class_index for p in tops)
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if file.suffix.lower() not in IMAGE_EXTENSIONS:
                    logger.warning("skipping %s: not an image file", file)
                    continue
                parts = file.relative_to(path).parts
                top = parts[1] if splits and len(parts) > 2 else parts[0]
                label = class_index[top] if imagefolder and top in class_index else -1
                add(read_image(file, read_size), str(file), label)
    if not images:
        raise BioTuneError(f"no images found in {', '.join(str(p) for p in paths)}")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:  # files read at read_size and .npz arrays of another size: resize on preprocessing
        side = max(s[0] for s in shapes)
        import torch.nn.functional as F

        images = [a if a.shape[:2] == (side, side) else
                  F.interpolate(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float(),
                                size=(side, side), mode="bilinear", antialias=True)[0].permute(1, 2, 0)
                  .round().clamp(0, 255).to(torch.uint8).numpy() for a in images]
    return Inputs(np.stack(images), tuple(names), np.asarray(labels, dtype=np.int64))


def predict(
    model: str | Path | LoadedModel,
    inputs: Sequence[str | Path] | np.ndarray | Inputs,
    *,
    batch_size: int = 256,
    top_k: int = 1,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> Predictions:
    """Top-``k`` predictions of a saved model (a folder, a run directory or a loaded model).

    Args:
        inputs: paths (see :func:`read_inputs`), a uint8 N×H×W×C array, or :class:`Inputs`.
        on_batch: called with the number of images after each batch (progress).

    Example:
        >>> p = predict("runs/demo", ["photo.jpg"], top_k=3)              # doctest: +SKIP
        >>> p.classes[p.indices[0, 0]], p.probabilities[0, 0]            # doctest: +SKIP
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BioTuneError(f"batch_size must be a positive integer, got {batch_size!r}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    if not isinstance(top_k, int) or not 1 <= top_k:
        raise BioTuneError(f"top_k must be a positive integer, got {top_k!r}")
    k = min(top_k, len(loaded.classes))
    if isinstance(inputs, np.ndarray):
        inputs = Inputs(inputs, tuple(f"[{i}]" for i in range(len(inputs))), np.full(len(inputs), -1))
    elif not isinstance(inputs, Inputs):
        inputs = read_inputs(inputs, loaded.classes, loaded.read_size)
    net = loaded.model
    dev = next(net.parameters()).device
    net = net.to(memory_format=torch.channels_last)  # the memory format training used
    indices, probs = [], []
    with torch.inference_mode():
        for start in range(0, len(inputs.images), batch_size):
            x = loaded.preprocess(inputs.images[start : start + batch_size]).to(dev)
            p = net(x).float().softmax(-1)
            top = p.topk(k, dim=-1)
            indices.append(top.indices.cpu().numpy())
            probs.append(top.values.cpu().numpy())
            if on_batch is not None:
                on_batch(len(x))
    return Predictions(inputs.names, np.concatenate(indices), np.concatenate(probs), loaded.classes, inputs.labels)


def write_predictions_csv(path: str | Path, predictions: Predictions) -> None:
    """``path,label,probability[,label_2,probability_2,…]`` per image, written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    k = predictions.indices.shape[1]
    header = ["path", "label", "probability"]
    for j in range(2, k + 1):
        header += [f"label_{j}", f"probability_{j}"]
    writer.writerow(header)
    for name, idx, prob in zip(predictions.names, predictions.indices, predictions.probabilities):
        row = [name]
        for i, p in zip(idx, prob):
            row += [predictions.classes[i], f"{p:.6f}"]
        writer.writerow(row)
    atomic_write_bytes(path, buf.getvalue().encode())
