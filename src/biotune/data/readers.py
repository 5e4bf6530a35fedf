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
from .folders import IMAGE_EXTENSIONS
from .listing import _TEST_FRACTION, _TEST_SPLIT_SEED, carve, read_ref

__all__ = [
    "ImageDataset",
    "IMAGE_EXTENSIONS",
    "make_dataset",
    "carve_test",
    "load_digits",
    "read_npz",
    "read_image",
    "fit_image",
]

logger = logging.getLogger(__name__)



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
        g_train, g_val, g_test: the group (patient, lesion...) of each image as an int code, when the
            source names a group column: carved splits and folds keep each group on one side.
        report: how the source was read (kind, where each split came from, what was skipped, identical
            images across splits): :func:`biotune.data.store.report_lines` prints it.
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
    g_train: np.ndarray | None = None
    g_val: np.ndarray | None = None
    g_test: np.ndarray | None = None
    report: dict | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """A short hash of every image and label: part of cache keys (a store's, computed once
        when it was written, is ``digest``)."""
        if self.digest is not None:
            return self.digest
        h = hashlib.sha1()
        for arr in self._hashed():
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    def _hashed(self) -> list[np.ndarray]:
        """The arrays the fingerprint covers, in order (groups only when there are some)."""
        arrays = [self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test,
                  self.g_train, self.g_val, self.g_test]
        return [a for a in arrays if a is not None]


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
    """A stratified test split of 20 % carved with a fixed seed (it must not move with a run's seed)."""
    train_idx, test_idx = carve(y, None, _TEST_FRACTION, _TEST_SPLIT_SEED, source, classes, "to carve a test split")
    return {"train": (x[train_idx], y[train_idx]), "test": (x[test_idx], y[test_idx])}


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
    try:
        return read_ref(path, size)[0]
    except BioTuneError as err:
        raise BioTuneError(f"{path}: cannot read image ({err})") from None


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
