"""Readers of image data into memory: the bundled digits, ``.npz`` files, ImageFolder trees,
single images; and the checks every dataset passes.

A dataset is uint8 images (N×H×W×C) with int64 labels 0..K−1 and K class names. These
readers are shared by :mod:`biotune.data.dataset` (the entry point, ``load_dataset``), the named
datasets of :mod:`biotune.data.catalog` and prediction on new images (:mod:`biotune.models.predict`).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BioTuneError

__all__ = [
    "ImageDataset",
    "IMAGE_EXTENSIONS",
    "make_dataset",
    "carve_test",
    "require_per_class",
    "load_digits",
    "read_npz",
    "read_image",
    "fit_image",
    "read_folder",
    "scan_folder",
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
        digest: the images' fingerprint when it is known without reading them (a store).
    """

    name: str
    classes: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    digest: str | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """A short hash of every image and label: part of cache keys (a store's, computed once
        when it was written, is ``digest``)."""
        if self.digest is not None:
            return self.digest
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


def make_dataset(name: str, source: str, classes, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> ImageDataset:
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


def carve_test(x: np.ndarray, y: np.ndarray, source: str, classes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedShuffleSplit

    require_per_class(y, 2, source, "to carve a test split", classes)
    sss = StratifiedShuffleSplit(n_splits=1, test_size=_TEST_FRACTION, random_state=_TEST_SPLIT_SEED)
    train_idx, test_idx = next(sss.split(np.zeros(len(y)), y))
    return {"train": (x[train_idx], y[train_idx]), "test": (x[test_idx], y[test_idx])}


def require_per_class(y: np.ndarray, minimum: int, source: str, why: str, classes) -> None:
    counts = np.bincount(y, minlength=len(classes))
    low = np.flatnonzero(counts < minimum)
    if len(low):
        names = [repr(str(classes[i])) for i in low[:10]]
        raise BioTuneError(
            f"{source}: class(es) {', '.join(names)} have fewer than {minimum} training images "
            f"(needed {why}; smallest has {counts[low].min()})"
        )


def load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    y = bunch.target.astype(np.int64)
    classes = [str(c) for c in bunch.target_names]
    return make_dataset("digits", "digits", classes, carve_test(x, y, "digits", classes))


def read_npz(path: Path) -> ImageDataset:
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
    return make_dataset(path.stem, str(path), classes.tolist(), splits)


def read_image(path: Path, size: int) -> np.ndarray:
    """Read any PIL-readable image as 8-bit RGB, short side resized to ``size``, centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return fit_image(img, size)
    except Exception as err:  # PIL raises many types for bad files
        raise BioTuneError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def fit_image(img, size: int) -> np.ndarray:
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


def scan_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """The classes of an ImageFolder and its image files with their labels, by split.

    Raises:
        BioTuneError: no class folders, an empty training class, a class missing from train.
    """
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    layout = split_dirs if "train" in split_dirs else {"train": root}
    scanned = {split: _scan_class_folders(path) for split, path in layout.items()}
    classes = sorted(scanned["train"])
    if len(classes) < 2:
        found = "no class folders" if not classes else f"one class folder ({classes[0]})"
        raise BioTuneError(f"{root}: {found}; expected {root}/<class>/<image files> with at least 2 classes")
    for split, folders in scanned.items():
        for name, files in folders.items():
            if not files and split == "train":
                raise BioTuneError(f"{layout[split] / name}: empty class folder (no image files)")
            if name not in classes:
                raise BioTuneError(f"{layout[split] / name}: class not in the training split")
    items = {split: [(path, label) for label, name in enumerate(classes) for path in folders.get(name, [])]
             for split, folders in scanned.items()}
    return classes, items


def read_folder(root: Path, size: int) -> ImageDataset:
    """An ImageFolder decoded into memory at ``size`` px (see :mod:`biotune.data.store` for the store)."""
    classes, items = scan_folder(root)
    arrays = {split: (np.stack([read_image(path, size) for path, _ in files]),
                      np.asarray([label for _, label in files], dtype=np.int64))
              for split, files in items.items() if files}
    if "test" not in arrays:
        arrays.update(carve_test(*arrays.pop("train"), str(root), classes))
    return make_dataset(root.name, str(root), classes, arrays)
