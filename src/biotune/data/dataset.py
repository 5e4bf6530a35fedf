"""Datasets as in-memory tensors: one entry point to load any source, stratified splits and
folds, preprocessing.

A dataset is uint8 images (N×H×W×C) with int64 labels 0..K−1 and K class names. Sources: the
bundled scikit-learn ``digits`` (offline default), an ``.npz`` file in the format of
``shared/data/README.md``, an ImageFolder directory (``root/<class>/*.jpg``, optionally
with ``train/``, ``val/``, ``test/`` subfolders) — read by :mod:`biotune.readers` — or one of
the paper's datasets by name (:mod:`biotune.data.catalog`). Images are resized and normalised once
(:func:`preprocess`), never per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BioTuneError
from .catalog import NAMES, load_named
from .readers import IMAGE_EXTENSIONS, ImageDataset, load_digits, read_folder, read_npz, require_per_class

__all__ = [
    "ImageDataset",
    "SplitData",
    "load_dataset",
    "split_dataset",
    "preprocess",
    "IMAGE_EXTENSIONS",
]


def load_dataset(spec: str, *, image_size: int = 224, data_dir: str | None = None) -> ImageDataset:
    """Load a dataset by name or path.

    Args:
        spec: ``"digits"``, one of the paper's dataset names (``mnist``, ``usps``, ``svhn``,
            ``cifar10``, ``stl10``, ``flowers102``, ``fgvc_aircraft``, ``dtd``, ``isic``; see
            :mod:`biotune.data.catalog`), a ``.npz`` path, or an ImageFolder directory.
        image_size: side to which ImageFolder images are resized on reading (short side,
            centre crop); arrays from ``digits`` and ``.npz`` keep their stored size.
        data_dir: cache directory of named datasets (default ``$BIOTUNE_DATA`` or
            ``~/.cache/biotune/data``).

    Raises:
        BioTuneError: unknown name, missing or corrupt file, inconsistent arrays or labels.

    Example:
        >>> ds = load_dataset("digits")
        >>> ds.num_classes, ds.x_train.dtype
        (10, dtype('uint8'))
    """
    if spec == "digits":
        return load_digits()
    if spec in NAMES:
        return load_named(spec, data_dir=data_dir, image_size=image_size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return read_folder(path, image_size)
    if path.suffix == ".npz":
        if not path.is_file():
            raise BioTuneError(f"dataset file {spec} does not exist")
        return read_npz(path)
    raise BioTuneError(
        f"unknown dataset {spec!r}: give 'digits', a name ({', '.join(NAMES)}), the path of an .npz file, "
        "or an ImageFolder directory"
    )


@dataclass(frozen=True)
class SplitData:
    """The arrays a search and a final fine-tune use, with stratified folds.

    Attributes:
        x_train, y_train: training data (the dataset's train split minus any carved validation).
        x_val, y_val: validation data (the dataset's own split, or carved from train).
        x_test, y_test: test data, used only for the final report.
        folds: index arrays into ``x_train``, stratified, disjoint, covering it.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    folds: tuple[np.ndarray, ...]

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def fold_for_generation(self, generation: int) -> int:
        """Generation g trains on fold g mod n_folds."""
        return generation % len(self.folds)


def split_dataset(ds: ImageDataset, *, val_fraction: float, n_folds: int, seed: int) -> SplitData:
    """Carve validation (when the dataset has none) and split the training data into folds.

    Args:
        ds: the dataset.
        val_fraction: share of train held out for validation, stratified.
        n_folds: number of stratified folds (ceil(1/p)); 1 means the whole training set.
        seed: seed of both splits.

    Raises:
        BioTuneError: a class has too few training images for the validation split or folds.

    Notes:
        Fold sizes differ by at most one image per class (scikit-learn's StratifiedKFold).
    """
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    if n_folds < 1:
        raise BioTuneError(f"`n_folds` must be at least 1, got {n_folds}")
    x, y = ds.x_train, ds.y_train
    if ds.x_val is None:
        require_per_class(y, 2, ds.name, "to carve a validation split", ds.classes)
        n_val = max(ds.num_classes, math.ceil(val_fraction * len(y)))
        if len(y) - n_val < ds.num_classes:
            raise BioTuneError(f"{ds.name}: too few training images ({len(y)}) to carve a validation split")
        sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        train_idx, val_idx = next(sss.split(np.zeros(len(y)), y))
        train_idx.sort()
        val_idx.sort()
        x_val, y_val, x, y = x[val_idx], y[val_idx], x[train_idx], y[train_idx]
    else:
        x_val, y_val = ds.x_val, ds.y_val
    if n_folds == 1:
        folds = (np.arange(len(y)),)
    else:
        require_per_class(y, n_folds, ds.name, f"for {n_folds} stratified folds (lower the folds with a larger --fraction)", ds.classes)
        skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        folds = tuple(np.sort(test) for _, test in skf.split(np.zeros(len(y)), y))
    return SplitData(x, y, x_val, y_val, ds.x_test, ds.y_test, folds)


def preprocess(
    images: np.ndarray,
    *,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    channels_last: bool = True,
    chunk: int = 512,
):
    """uint8 N×H×W×C images → normalised float32 N×3×S×S tensor, resized once (bilinear, antialiased).

    Grayscale is repeated to three channels. Work is done in chunks to bound peak memory.
    """
    import torch
    import torch.nn.functional as F

    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.float32)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    for start in range(0, len(images), chunk):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk]))
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        if batch.shape[-2:] != (image_size, image_size):
            batch = F.interpolate(batch, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + len(batch)] = (batch - mean_t) / std_t
    return out
