"""Datasets as in-memory tensors: loading, validation, stratified splits and folds, preprocessing.

A dataset is uint8 images (N×H×W×C) with int64 labels 0..K−1 and K class names. Sources: the
bundled scikit-learn ``digits`` (offline default), an ``.npz`` file in the format of
``shared/data/README.md``, or an ImageFolder directory (``root/<class>/*.jpg``, optionally
with ``train/``, ``val/``, ``test/`` subfolders). Images are resized and normalised once
(:func:`preprocess`), never per epoch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BioTuneError

__all__ = [
    "ImageDataset",
    "SplitData",
    "load_dataset",
    "split_dataset",
    "preprocess",
    "IMAGE_EXTENSIONS",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# Fixed seed of the test split carved from datasets that have none (digits, a flat
# ImageFolder): the test set must not move with the run's --seed.
_TEST_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels of a dataset's splits, all in memory.

    Attributes:
        name: short name used in run directories and reports.
        classes: K class names; labels index this tuple.
        x_train, y_train: training images (uint8, N×H×W×C) and labels (int64).
        x_val, y_val: the dataset's own validation split, or ``None``.
        x_test, y_test: the test split.
    """

    name: str
    classes: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """A short hash of every image and label: part of cache keys."""
        h = hashlib.sha1()
        for arr in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            if arr is not None:
                h.update(str(arr.shape).encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def _check_split(source: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one split and bring it to uint8 N×H×W×3|1 and int64 labels."""
    where = f"{source}: {split}"
    if x.dtype == object or y.dtype == object:
        raise BioTuneError(f"{where} holds Python objects; images must be uint8 arrays and labels integers")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            raise BioTuneError(f"{where} images contain NaN or infinite values")
        raise BioTuneError(f"{where} images must be uint8 (0..255), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or x.shape[0] == 0:
        raise BioTuneError(f"{where} images must be a non-empty N×H×W×C array with C in 1, 3, 4, got shape {x.shape}")
    if x.shape[-1] == 4:
        x = x[..., :3]  # drop alpha
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
            raise BioTuneError(f"{where} labels contain NaN or infinite values")
        raise BioTuneError(f"{where} labels must be integers, got dtype {y.dtype}")
    y = y.reshape(-1)
    if len(y) != len(x):
        raise BioTuneError(f"{where} has {len(x)} images but {len(y)} labels")
    if y.min() < 0 or y.max() >= num_classes:
        raise BioTuneError(
            f"{where} labels must be in 0..{num_classes - 1} (one per class name), "
            f"got values from {y.min()} to {y.max()}"
        )
    return x, y.astype(np.int64)


def _make_dataset(name: str, source: str, classes, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> ImageDataset:
    classes = tuple(str(c) for c in classes)
    if len(classes) < 2:
        raise BioTuneError(f"{source}: a classification dataset needs at least 2 classes, got {len(classes)}")
    checked = {k: _check_split(source, k, x, y, len(classes)) for k, (x, y) in splits.items()}
    counts = np.bincount(checked["train"][1], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise BioTuneError(f"{source}: class(es) without training images: {', '.join(empty[:10])}")
    val = checked.get("val")
    return ImageDataset(
        name=name,
        classes=classes,
        x_train=checked["train"][0],
        y_train=checked["train"][1],
        x_test=checked["test"][0],
        y_test=checked["test"][1],
        x_val=None if val is None else val[0],
        y_val=None if val is None else val[1],
    )


def _carve_test(x: np.ndarray, y: np.ndarray, source: str, classes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedShuffleSplit

    _require_per_class(y, 2, source, "to carve a test split", classes)
    sss = StratifiedShuffleSplit(n_splits=1, test_size=_TEST_FRACTION, random_state=_TEST_SPLIT_SEED)
    train_idx, test_idx = next(sss.split(np.zeros(len(y)), y))
    return {"train": (x[train_idx], y[train_idx]), "test": (x[test_idx], y[test_idx])}


def _require_per_class(y: np.ndarray, minimum: int, source: str, why: str, classes) -> None:
    counts = np.bincount(y, minlength=len(classes))
    low = np.flatnonzero(counts < minimum)
    if len(low):
        names = [repr(str(classes[i])) for i in low[:10]]
        raise BioTuneError(
            f"{source}: class(es) {', '.join(names)} have fewer than {minimum} training images "
            f"(needed {why}; smallest has {counts[low].min()})"
        )


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    y = bunch.target.astype(np.int64)
    classes = [str(c) for c in bunch.target_names]
    return _make_dataset("digits", "digits", classes, _carve_test(x, y, "digits", classes))


def _load_npz(path: Path) -> ImageDataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise BioTuneError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    with archive:
        try:
            keys = set(archive.files)
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test", "classes") if k not in keys]
            if missing:
                raise BioTuneError(f"{path}: missing array(s) {', '.join(missing)} (see the .npz format in the README)")
            splits = {"train": (archive["x_train"], archive["y_train"]), "test": (archive["x_test"], archive["y_test"])}
            if "x_val" in keys and "y_val" in keys:
                splits["val"] = (archive["x_val"], archive["y_val"])
            classes = archive["classes"]
        except ValueError as err:  # an object array would need pickle: refused
            raise BioTuneError(f"{path}: {err} (object arrays are refused: they could run code)") from None
        except (OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
            raise BioTuneError(f"{path}: corrupt .npz file ({err})") from None
    return _make_dataset(path.stem, str(path), classes.tolist(), splits)


def _read_image(path: Path, size: int) -> np.ndarray:
    """Read any PIL-readable image as 8-bit RGB, short side resized to ``size``, centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return _fit_image(img, size)
    except Exception as err:  # PIL raises many types for bad files
        raise BioTuneError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def _fit_image(img, size: int) -> np.ndarray:
    """A PIL image as 8-bit RGB (16-bit scaled down), short side resized to ``size``, centre-cropped."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.round(arr / peak * 255).astype(np.uint8))
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _scan_class_folders(root: Path) -> dict[str, list[Path]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    out: dict[str, list[Path]] = {}
    for name in classes:
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        for skipped in sorted(set(files) - set(images)):
            logger.warning("skipping %s: not an image file", skipped)
        out[name] = images
    return out


def _load_folder(root: Path, size: int) -> ImageDataset:
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    layout = split_dirs if "train" in split_dirs else {"train": root}
    scanned = {split: _scan_class_folders(path) for split, path in layout.items()}
    classes = sorted(scanned["train"])
    if not classes:
        raise BioTuneError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    for split, folders in scanned.items():
        for name, files in folders.items():
            if not files and split == "train":
                raise BioTuneError(f"{layout[split] / name}: empty class folder (no image files)")
            if name not in classes:
                raise BioTuneError(f"{layout[split] / name}: class not in the training split")
    arrays = {}
    for split, folders in scanned.items():
        xs, ys = [], []
        for label, name in enumerate(classes):
            for path in folders.get(name, []):
                xs.append(_read_image(path, size))
                ys.append(label)
        if xs:
            arrays[split] = (np.stack(xs), np.asarray(ys, dtype=np.int64))
    if "test" not in arrays:
        arrays.update(_carve_test(*arrays.pop("train"), str(root), classes))
    return _make_dataset(root.name, str(root), classes, arrays)


def load_dataset(spec: str, *, image_size: int = 224, data_dir: str | None = None) -> ImageDataset:
    """Load a dataset by name or path.

    Args:
        spec: ``"digits"``, one of the paper's dataset names (``mnist``, ``usps``, ``svhn``,
            ``cifar10``, ``stl10``, ``flowers102``, ``fgvc_aircraft``, ``dtd``, ``isic``; see
            :mod:`biotune.catalog`), a ``.npz`` path, or an ImageFolder directory.
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
        return _load_digits()
    from .catalog import NAMES, load_named

    if spec in NAMES:
        return load_named(spec, data_dir=data_dir, image_size=image_size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path, image_size)
    if path.suffix == ".npz":
        if not path.is_file():
            raise BioTuneError(f"dataset file {spec} does not exist")
        return _load_npz(path)
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
        _require_per_class(y, 2, ds.name, "to carve a validation split", ds.classes)
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
        _require_per_class(y, n_folds, ds.name, f"for {n_folds} stratified folds (lower the folds with a larger --fraction)", ds.classes)
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
