"""Datasets as uint8 arrays: one entry point to load any source, stratified splits and folds,
the conversion to normalised float.

A dataset is uint8 images (N×H×W×C) with int64 labels 0..K−1 and K class names. Sources: the
bundled scikit-learn ``digits`` (offline default), an ``.npz`` file in the format of
``shared/data/README.md``, an ImageFolder directory (``root/<class>/*.jpg``, optionally
with ``train/``, ``val/``, ``test/`` subfolders) — read by :mod:`biotune.data.readers` — or one
of the paper's datasets by name (:mod:`biotune.data.catalog`). With a store directory, files and
folders are memory-mapped from a uint8 store on disk (:mod:`biotune.data.store`); splits are rows
of it (:class:`ImageRows`), never copies. Images become float batch by batch (:func:`to_float`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BioTuneError
from .catalog import NAMES, load_named, named_npz
from .listing import ReadOptions, carve, require_per_class
from .readers import IMAGE_EXTENSIONS, ImageDataset, load_digits, read_npz
from .rows import ImageRows
from .sources import ARCHIVE_SUFFIXES, archive_signature, is_archive, is_listed_source, list_source, unpack
from .store import decode_listing, open_listing, open_npz, open_stored

__all__ = [
    "ImageDataset",
    "SplitData",
    "load_dataset",
    "split_dataset",
    "preprocess",
    "to_float",
    "ImageRows",
    "IMAGE_EXTENSIONS",
    "ReadOptions",
]


def load_dataset(spec: str, *, image_size: int = 224, data_dir: str | None = None, store_dir: str | Path | None = None,
                 progress: bool = False, options: ReadOptions | None = None) -> ImageDataset:
    """Load a dataset by name or path.

    Args:
        spec: ``"digits"``, one of the paper's dataset names (``mnist``, ``usps``, ``svhn``,
            ``cifar10``, ``stl10``, ``flowers102``, ``fgvc_aircraft``, ``dtd``, ``isic``; see
            :mod:`biotune.data.catalog`), a ``.npz`` path, an ImageFolder directory (split folders under
            any of their names), a label table (``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``), a folder with
            ``metadata.csv``/``.jsonl``, a ``.zip``/``.tar(.gz)`` of any of these, a ``save_to_disk`` folder or
            ``hf:owner/name[:config]`` (see :mod:`biotune.data.sources`).
        image_size: side to which ImageFolder images are resized on reading (short side,
            centre crop); arrays from ``digits`` and ``.npz`` keep their stored size (in a
            store: the smaller of it and ``image_size``).
        data_dir: cache directory of named datasets (default ``$BIOTUNE_DATA`` or
            ``~/.cache/biotune/data``).
        store_dir: where the uint8 store of a file or folder is kept (:mod:`biotune.data.store`);
            the images are then memory-mapped from it. ``None`` reads them into memory.
        progress: show a progress bar while an ImageFolder is stored.
        options: how a table or Hugging Face dataset is read (columns, image root, class names,
            groups, skipping unreadable files); :class:`ReadOptions`.

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
        if store_dir is not None:
            cached = named_npz(spec, data_dir=data_dir, image_size=image_size)
            if cached is None:  # download and convert once (in memory), then store like any .npz
                load_named(spec, data_dir=data_dir, image_size=image_size)
                cached = named_npz(spec, data_dir=data_dir, image_size=image_size)
            if cached is not None:
                return dataclasses.replace(open_npz(cached, Path(store_dir), image_size, read_npz), name=spec)
        return load_named(spec, data_dir=data_dir, image_size=image_size)
    options = options or ReadOptions()
    if is_listed_source(spec):
        return _load_listed(spec, image_size, store_dir, progress, options)
    path = Path(spec).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise BioTuneError(f"dataset file {spec} does not exist")
        if store_dir is not None:
            return open_npz(path, Path(store_dir), image_size, read_npz)
        return read_npz(path)
    raise BioTuneError(
        f"unknown dataset {spec!r}: give 'digits', a name ({', '.join(NAMES)}), the path of an .npz file, "
        "an ImageFolder directory, a table (.csv, .tsv, .parquet, .jsonl), a .zip or .tar(.gz) of one, "
        "or hf:owner/name"
    )


def _load_listed(spec: str, size: int, store_dir, progress: bool, options: ReadOptions) -> ImageDataset:
    """A folder, table, archive or Hugging Face dataset: listed and checked, then decoded (once, into
    the store when there is one)."""
    import tempfile

    decode = dict(skip_unreadable=options.skip_unreadable, progress=progress)
    path = Path(spec).expanduser()
    if not is_archive(path):
        listing = list_source(spec, options)
        if store_dir is None:
            return decode_listing(listing, size, **decode)
        return open_listing(listing, Path(store_dir), size, options=options.key(), **decode)
    if not path.is_file():
        raise BioTuneError(f"dataset file {spec} does not exist")
    name = path.name[: -len(next(s for s in ARCHIVE_SUFFIXES if path.name.lower().endswith(s)))]
    signature = archive_signature(path)
    if store_dir is not None:
        stored = open_stored(path, Path(store_dir), size, options.key(), signature)
        if stored is not None:
            return stored
        Path(store_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpacked-", dir=store_dir) as tmp:
        listing = list_source(unpack(path, Path(tmp)), options, name=name)
        listing.source = str(path)
        for items in listing.splits.values():
            items.names = [n.replace(tmp, str(path)) for n in items.names]
        if store_dir is None:
            return decode_listing(listing, size, **decode)
        return open_listing(listing, Path(store_dir), size, options=options.key(), signature=signature, source=path,
                            **decode)


@dataclass(frozen=True)
class SplitData:
    """The arrays a search and a final fine-tune use, with stratified folds.

    Attributes:
        x_train, y_train: training data (the dataset's train split minus any carved validation;
            the images are then :class:`ImageRows` of the dataset's array, not a copy).
        x_val, y_val: validation data (the dataset's own split, or carved from train).
        x_test, y_test: test data, used only for the final report.
        folds: index arrays into ``x_train``, stratified, disjoint, covering it.
    """

    x_train: np.ndarray | ImageRows
    y_train: np.ndarray
    x_val: np.ndarray | ImageRows
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
        Fold sizes differ by at most one image per class (scikit-learn's StratifiedKFold). With groups
        (``ds.g_train``) the carved validation split and the folds are stratified group splits
        (``StratifiedGroupKFold``): no group has images on two sides.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if n_folds < 1:
        raise BioTuneError(f"`n_folds` must be at least 1, got {n_folds}")
    x, y, groups = ds.x_train, ds.y_train, ds.g_train
    if ds.x_val is None:
        n_val = max(ds.num_classes, math.ceil(val_fraction * len(y)))
        if len(y) - n_val < ds.num_classes:
            raise BioTuneError(f"{ds.name}: too few training images ({len(y)}) to carve a validation split")
        train_idx, val_idx = carve(y, groups, val_fraction, seed, ds.name, ds.classes, "to carve a validation split",
                                   size=n_val)
        train_idx.sort()
        val_idx.sort()
        # Rows of the dataset's array, not copies: a memory-mapped store stays on disk.
        x_val, y_val, x, y = ImageRows(x, val_idx), y[val_idx], ImageRows(x, train_idx), y[train_idx]
        groups = None if groups is None else groups[train_idx]
    else:
        x_val, y_val = ds.x_val, ds.y_val
    if n_folds == 1:
        folds = (np.arange(len(y)),)
    else:
        require_per_class(y, n_folds, ds.name, f"for {n_folds} stratified folds (lower the folds with a larger --fraction)", ds.classes)
        if groups is None:
            skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            folds = tuple(np.sort(test) for _, test in skf.split(np.zeros(len(y)), y))
        else:
            if len(np.unique(groups)) < n_folds:
                raise BioTuneError(f"{ds.name}: {len(np.unique(groups))} groups are too few for {n_folds} folds")
            sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            folds = tuple(np.sort(test) for _, test in sgkf.split(np.zeros(len(y)), y, groups))
    return SplitData(x, y, x_val, y_val, ds.x_test, ds.y_test, folds)


def to_float(batch, *, image_size: int, mean, std):
    """uint8 N×H×W×C tensor (on any device) → normalised float32 N×3×S×S, resized when needed.

    The one conversion of every image BioTune trains or evaluates on: :func:`preprocess` (whole
    arrays, on the CPU) and the training batches (:mod:`biotune.training.images`, on the device)
    both call it, so they agree to the float rounding of the device. ``mean`` and ``std`` are
    float32 tensors of shape 1×3×1×1 on the batch's device. Grayscale is repeated to three channels.
    """
    import torch.nn.functional as F

    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    if batch.shape[-2:] != (image_size, image_size):
        batch = F.interpolate(batch, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return (batch - mean) / std


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

    For images that are predicted or exported; training converts batch by batch on the device
    instead (:mod:`biotune.training.images`). Work is done in chunks to bound peak memory.
    """
    import torch

    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.float32)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    for start in range(0, len(images), chunk):
        batch = torch.from_numpy(np.array(images[start : start + chunk], copy=True, order="C"))
        out[start : start + len(batch)] = to_float(batch, image_size=image_size, mean=mean_t, std=std_t)
    return out
