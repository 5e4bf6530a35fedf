"""What a dataset is made of before any image is decoded: a :class:`Listing` of image references
with labels, split and group per image, and the options that say how to read a source.

Every reader (folders, tables, archives, Hugging Face datasets) produces a listing; the store
(:mod:`biotune.data.store`) decodes one. Checks that need no decoding (columns, labels, split
values, missing files, a row listed twice) run while a listing is built, and all their problems
are reported together (:class:`Problems`), so nothing is written for an input that cannot be read.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..config import ReadOptions
from ..errors import BioTuneError

__all__ = ["ReadOptions", "ImageRef", "SplitItems", "Listing", "Problems", "SPLIT_ALIASES", "split_of", "read_ref"]

# Split folder names and split-column values (any case) -> the split they mean.
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
_SHOWN = 5  # problems named in a message; the rest are counted
_TEST_SPLIT_SEED = 0  # the carved test split must not move with a run's --seed
_TEST_FRACTION = 0.2


def split_of(name: str) -> str | None:
    """``"train"``, ``"val"`` or ``"test"`` for a split name in any of its spellings, else ``None``."""
    return SPLIT_ALIASES.get(str(name).strip().lower())


class ImageRef(Protocol):
    """An image that is not a file of its own (a row of a Hugging Face dataset)."""

    def load(self):  # -> PIL.Image.Image
        ...


@dataclass
class SplitItems:
    """The images of one split, in order: a file path or an :class:`ImageRef` each, with labels.

    ``names`` say where each came from in messages (a path, ``table.csv line 12``); ``ids`` are the
    table's own values of the image column (kept for predictions); ``groups`` the group of each.
    """

    refs: list[Any]
    labels: np.ndarray
    names: list[str]
    ids: list[str] | None = None
    groups: list[str] | None = None

    def take(self, index) -> "SplitItems":
        index = [int(i) for i in index]
        pick = (lambda values: None if values is None else [values[i] for i in index])  # noqa: E731
        return SplitItems([self.refs[i] for i in index], self.labels[index], [self.names[i] for i in index],
                          pick(self.ids), pick(self.groups))

    def __len__(self) -> int:
        return len(self.refs)


@dataclass
class Listing:
    """A dataset before decoding: classes, the images of each split, and how each split was found.

    Attributes:
        name: the dataset's short name (run directories, reports).
        source: the path or address it was read from (messages).
        kind: what the source is (``ImageFolder``, ``table``, ``Hugging Face dataset`` ...).
        classes: K class names; labels index this tuple.
        splits: ``train`` and, when the source has them, ``val`` and ``test``.
        origin: per split, where it came from (``folder valid/``, ``column split = test``...).
        group_column: the column whose groups are kept together, or ``None``.
        stamps: what the source is made of (files with size and modification time, fingerprints);
            a changed stamp rewrites the store.
        notes: what was dropped or assumed while reading (shown by ``--dry-run``).
    """

    name: str
    source: str
    kind: str
    classes: tuple[str, ...]
    splits: dict[str, SplitItems]
    origin: dict[str, str] = field(default_factory=dict)
    group_column: str | None = None
    stamps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def signature(self) -> str:
        """A hash of the source's stamps and of every image reference and label of every split."""
        h = hashlib.sha1()
        for stamp in self.stamps:
            h.update(stamp.encode() + b"\n")
        for split in sorted(self.splits):
            items = self.splits[split]
            h.update(f"{split}:{len(items)}:{','.join(self.classes)}".encode())
            h.update(np.asarray(items.labels, dtype=np.int64).tobytes())
            for name, group in zip(items.names, items.groups or [""] * len(items)):
                h.update(f"{name}\0{group}\n".encode())
        return h.hexdigest()[:20]

    def carve_test(self) -> "Listing":
        """The listing with a test split carved from train when it has none: 20 %, stratified (by
        group too when there are groups), with a fixed seed (the same images whatever the run's seed)."""
        if "test" in self.splits:
            return self
        train = self.splits["train"]
        train_idx, test_idx = carve(train.labels, train.groups, _TEST_FRACTION, _TEST_SPLIT_SEED, self.source,
                                    self.classes, "to carve a test split")
        how = "carved from train: 20 %, stratified" + (f", {self.group_column} groups kept apart" if train.groups else "")
        return replace(self, splits={**self.splits, "train": train.take(train_idx), "test": train.take(test_idx)},
                       origin={**self.origin, "test": how})


def carve(labels: np.ndarray, groups: list[str] | np.ndarray | None, fraction: float, seed: int, source: str,
          classes, why: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (kept, carved): a stratified share ``fraction`` (or ``size`` images) carved out;
    with ``groups`` a stratified group split (scikit-learn's ``StratifiedGroupKFold``), so that no
    group lands on both sides.

    Raises:
        BioTuneError: a class has fewer than 2 images, or too few groups to carve from.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

    require_per_class(labels, 2, source, why, classes)
    if groups is None:
        sss = StratifiedShuffleSplit(n_splits=1, test_size=size if size is not None else fraction, random_state=seed)
        return next(sss.split(np.zeros(len(labels)), labels))
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    n_splits = max(2, round(len(labels) / size) if size else round(1 / fraction))
    if codes.max() + 1 < n_splits:
        raise BioTuneError(f"{source}: {codes.max() + 1} groups are too few to carve {fraction:.0%} out by group "
                           f"({why}); at least {n_splits} are needed")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep, out = next(sgkf.split(np.zeros(len(labels)), labels, codes))
    return keep, out


def require_per_class(y: np.ndarray, minimum: int, source: str, why: str, classes) -> None:
    counts = np.bincount(y, minlength=len(classes))
    low = np.flatnonzero(counts < minimum)
    if len(low):
        names = [repr(str(classes[i])) for i in low[:10]]
        raise BioTuneError(
            f"{source}: class(es) {', '.join(names)} have fewer than {minimum} training images "
            f"(needed {why}; smallest has {counts[low].min()})"
        )


class Problems:
    """Problems of an input collected in one pass, then raised as one message.

    Example:
        >>> p = Problems("data.csv")
        >>> p.add("missing file", "line 3: a.jpg")
        >>> p.count
        1
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: dict[str, list[str]] = {}

    def add(self, kind: str, detail: str) -> None:
        self.found.setdefault(kind, []).append(detail)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.found.values())

    def message(self, fix: str = "") -> str:
        parts = []
        for kind, details in self.found.items():
            more = f" (and {len(details) - _SHOWN} more)" if len(details) > _SHOWN else ""
            parts.append(f"{len(details)} × {kind}: " + "; ".join(details[:_SHOWN]) + more)
        lead = f"{self.source}: {self.count} problem{'s' if self.count != 1 else ''}, nothing was read or written"
        return "\n  ".join([lead, *parts]) + (f"\n  fix: {fix}" if fix else "")

    def raise_if_any(self, fix: str = "") -> None:
        if self.found:
            raise BioTuneError(self.message(fix))


def read_ref(ref, size: int) -> tuple[np.ndarray, str]:
    """One image as 8-bit RGB at ``size`` (short side, centre crop) and a digest of its bytes
    (a file's bytes, or the decoded pixels of an :class:`ImageRef`), to find identical images."""
    from PIL import Image

    from .readers import fit_image

    buffer = None
    try:
        if isinstance(ref, (str, Path)):
            data = Path(ref).read_bytes()
            digest = hashlib.sha1(data).hexdigest()
            buffer = io.BytesIO(data)
            with Image.open(buffer) as img:
                img.load()
                return fit_image(img, size), digest
        img = ref.load()
        img.load()
        digest = hashlib.sha1(img.tobytes()).hexdigest()
        return fit_image(img, size), digest
    except Exception as err:  # PIL raises many types for bad files
        reason = str(err).replace(" " + repr(buffer), "") if buffer is not None else str(err)
        raise BioTuneError(f"{type(err).__name__}: {reason}") from None
