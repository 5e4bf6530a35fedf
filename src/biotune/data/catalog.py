"""The paper's datasets by name, from a cache directory: read offline, downloaded when online.

``load_named("cifar10", data_dir=...)`` looks in the cache directory (``--data-dir``, else
the ``BIOTUNE_DATA`` environment variable, else ``~/.cache/biotune/data``) for, in order:

1. ``<name>.npz`` in the shared format (``shared/data/README.md``), used as is;
2. ``<name>-<size>px.npz``, a copy this module wrote earlier for datasets of varied image sizes;
3. for ``isic``, the challenge layout under ``<dir>/isic``: images plus ground-truth CSV files;
4. otherwise the official splits through torchvision (downloaded into ``<dir>/torchvision``
   when online, found there offline), converted once and written as 1. or 2.

A dataset found nowhere gives one error that says where to put the files.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import BioTuneError
from .readers import IMAGE_EXTENSIONS, ImageDataset, fit_image, make_dataset, read_image, read_npz

__all__ = ["NAMES", "DATA_ENV", "default_data_dir", "load_named"]

logger = logging.getLogger(__name__)

NAMES = ("mnist", "usps", "svhn", "cifar10", "stl10", "flowers102", "fgvc_aircraft", "dtd", "isic")
DATA_ENV = "BIOTUNE_DATA"
# Datasets whose images have many sizes: resized on conversion (short side, centre crop).
_VARIED = {"flowers102", "fgvc_aircraft", "dtd", "isic"}


def default_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit``, else ``$BIOTUNE_DATA``, else ``~/.cache/biotune/data``."""
    chosen = explicit or os.environ.get(DATA_ENV) or Path.home() / ".cache" / "biotune" / "data"
    return Path(chosen).expanduser()


def named_npz(name: str, *, data_dir: str | os.PathLike | None = None, image_size: int = 224) -> Path | None:
    """The ``.npz`` a named dataset is kept in under the data directory, when it is there."""
    root = default_data_dir(data_dir)
    return next((c for c in (root / f"{name}.npz", root / f"{name}-{image_size}px.npz") if c.is_file()), None)


def load_named(name: str, *, data_dir: str | os.PathLike | None = None, image_size: int = 224) -> ImageDataset:
    """One of :data:`NAMES` with its official splits (see the module docstring for where from).

    Raises:
        BioTuneError: the dataset is in none of the places and cannot be downloaded.
    """
    if name not in NAMES:
        raise BioTuneError(f"unknown dataset name {name!r}; known: {', '.join(NAMES)}")
    root = default_data_dir(data_dir)
    cached = named_npz(name, data_dir=data_dir, image_size=image_size)
    if cached is not None:
        ds = read_npz(cached)
        return ImageDataset(name, ds.classes, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.x_val, ds.y_val)
    if name == "isic":
        if (root / "isic").is_dir():
            return _load_isic(root / "isic", image_size)
        raise BioTuneError(
            f"dataset 'isic' is not in {root}: put the ISIC challenge's images and ground-truth CSV files "
            f"under {root / 'isic'} (or an isic.npz in {root}); set --data-dir or ${DATA_ENV} to look elsewhere"
        )
    try:
        splits, classes = _from_torchvision(name, root / "torchvision", image_size)
    except Exception as err:  # no network, a partial download, a corrupt archive...
        raise BioTuneError(
            f"dataset {name!r} is not in {root} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Put {name}.npz (the .npz format of the README) in {root}, or torchvision's {name} files under "
            f"{root / 'torchvision'}, or set --data-dir or ${DATA_ENV} to where they are"
        ) from None
    ds = make_dataset(name, name, classes, splits)
    out = root / (f"{name}-{image_size}px.npz" if name in _VARIED else f"{name}.npz")
    _save(out, ds)
    return ds


def _save(path: Path, ds: ImageDataset) -> None:
    arrays = dict(x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test, classes=np.array(ds.classes))
    if ds.x_val is not None:
        arrays.update(x_val=ds.x_val, y_val=ds.y_val)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    logger.info("dataset %s converted once into %s", ds.name, path)


def _from_torchvision(name: str, root: Path, size: int):
    """Official splits through torchvision as uint8 arrays, and the class names."""
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    if name in ("mnist", "usps", "cifar10"):
        cls = {"mnist": tvd.MNIST, "usps": tvd.USPS, "cifar10": tvd.CIFAR10}[name]
        parts = {s: cls(str(root), train=(s == "train"), download=True) for s in ("train", "test")}
        splits = {s: (np.asarray(d.data, dtype=np.uint8), np.asarray(d.targets, dtype=np.int64)) for s, d in parts.items()}
        classes = getattr(parts["train"], "classes", None) or [str(i) for i in range(10)]
        return splits, classes
    if name in ("svhn", "stl10"):
        cls = {"svhn": tvd.SVHN, "stl10": tvd.STL10}[name]
        parts = {s: cls(str(root), split=s, download=True) for s in ("train", "test")}
        splits = {s: (d.data.transpose(0, 2, 3, 1).astype(np.uint8), np.asarray(d.labels, dtype=np.int64)) for s, d in parts.items()}
        classes = getattr(parts["train"], "classes", None) or [str(i) for i in range(10)]
        return splits, classes
    cls = {"flowers102": tvd.Flowers102, "fgvc_aircraft": tvd.FGVCAircraft, "dtd": tvd.DTD}[name]
    parts = {s: cls(str(root), split=s, download=True) for s in ("train", "val", "test")}
    splits = {}
    for split, d in parts.items():
        images, labels = [], []
        for i in range(len(d)):
            img, label = d[i]
            images.append(fit_image(img, size))
            labels.append(label)
        splits[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    classes = getattr(parts["train"], "classes", None) or [str(i + 1) for i in range(102)]
    return splits, classes


_ISIC_SPLITS = {"training": "train", "validation": "val", "test": "test"}


def _load_isic(root: Path, size: int) -> ImageDataset:
    """The ISIC challenge layout: ``*GroundTruth*.csv`` (``image`` + one-hot class columns) per split.

    The split is read from the CSV's name (``Training``, ``Validation``, ``Test``); images are
    found anywhere under ``root`` by file stem.
    """
    images = {p.stem: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS}
    tables: dict[str, Path] = {}
    for table in sorted(root.rglob("*.csv")):
        lowered = table.name.lower()
        split = next((s for key, s in _ISIC_SPLITS.items() if key in lowered), None)
        if split and "groundtruth" in lowered.replace("_", "").replace("-", ""):
            tables[split] = table
    if "train" not in tables or "test" not in tables:
        raise BioTuneError(
            f"{root}: ISIC layout needs ground-truth CSV files for Training and Test "
            f"(e.g. ISIC2018_Task3_Training_GroundTruth.csv), found {sorted(tables) or 'none'}"
        )
    classes: list[str] | None = None
    splits = {}
    for split, table in tables.items():
        with open(table, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows or rows[0][0].strip().lower() != "image":
            raise BioTuneError(f"{table}: the first column must be 'image', then one column per class")
        header = [h.strip() for h in rows[0][1:]]
        if classes is None:
            classes = header
        elif header != classes:
            raise BioTuneError(f"{table}: class columns {header} differ from {classes} in the other splits")
        xs, ys = [], []
        for line, row in enumerate(rows[1:], start=2):
            try:
                onehot = np.asarray([float(v) for v in row[1:]])
            except ValueError:
                raise BioTuneError(f"{table}, line {line}: class columns must be numbers") from None
            if len(onehot) != len(classes) or onehot.max() <= 0:
                raise BioTuneError(f"{table}, line {line}: expected one positive class among {len(classes)} columns")
            image = images.get(row[0].strip())
            if image is None:
                raise BioTuneError(f"{table}, line {line}: image {row[0]!r} not found under {root}")
            xs.append(read_image(image, size))
            ys.append(int(onehot.argmax()))
        splits[split] = (np.stack(xs), np.asarray(ys, dtype=np.int64))
    return make_dataset("isic", str(root), classes, splits)
