"""ImageFolder trees as a :class:`~biotune.data.listing.Listing`: ``root/<class>/…`` or split folders
``root/<split>/<class>/…`` whose names may be any spelling of a split (``train``/``training``,
``val``/``valid``/``validation``/``dev``, ``test``/``testing``, any case). A split name never becomes a
class: a top level that mixes split folders and other folders is refused, naming both."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BioTuneError
from .listing import Listing, SplitItems, split_of

__all__ = ["IMAGE_EXTENSIONS", "scan_folder", "split_folders", "visible_dirs"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def visible_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def split_folders(root: Path) -> dict[str, Path]:
    """The split folders at the top of ``root`` by split (``{}`` for a flat ImageFolder).

    Raises:
        BioTuneError: split folders beside other folders, two folders for one split, or split
            folders without a training split.
    """
    dirs = visible_dirs(root)
    splits = {p: split_of(p.name) for p in dirs}
    named = [p for p, s in splits.items() if s]
    if not named:
        return {}
    others = [p.name for p, s in splits.items() if not s]
    if others:
        raise BioTuneError(
            f"{root}: split folders ({', '.join(p.name for p in named)}) beside other folders "
            f"({', '.join(others[:10])}); a split name never becomes a class: move the class folders into the "
            "split folders, or rename them"
        )
    out: dict[str, Path] = {}
    for path in named:
        split = splits[path]
        if split in out:
            raise BioTuneError(f"{root}: two folders for the {split} split: {out[split].name}/ and {path.name}/")
        out[split] = path
    if "train" not in out:
        raise BioTuneError(f"{root}: split folders {', '.join(p.name + '/' for p in out.values())} but no training "
                           "split (train/ or training/)")
    return out


def _class_files(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for folder in visible_dirs(root):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        for skipped in sorted(set(files) - set(images)):
            logger.warning("skipping %s: not an image file", skipped)
        out[folder.name] = images
    return out


def scan_folder(root: Path) -> Listing:
    """The classes of an ImageFolder and its image files with their labels, by split.

    Raises:
        BioTuneError: no class folders, an empty training class, a class missing from train,
            split folders mixed with other folders.
    """
    layout = split_folders(root) or {"train": root}
    scanned = {split: _class_files(path) for split, path in layout.items()}
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
    splits = {}
    for split, folders in scanned.items():
        pairs = [(path, label) for label, name in enumerate(classes) for path in folders.get(name, [])]
        if pairs:
            splits[split] = SplitItems([p for p, _ in pairs], np.asarray([lab for _, lab in pairs], dtype=np.int64),
                                       [str(p) for p, _ in pairs])
    origin = {s: f"folder {p.name}/" for s, p in layout.items() if p != root and s in splits}
    if layout.get("train") == root:
        origin["train"] = "the class folders"
    stamps = [f"{p.relative_to(root)}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}"
              for items in splits.values() for p in items.refs]
    return Listing(root.name, str(root), "ImageFolder", tuple(classes), splits, origin, stamps=stamps)
