"""Hugging Face datasets as a :class:`~biotune.data.listing.Listing`: ``hf:owner/name[:config]`` (from
the Hub, or its cache) and a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

Needs the optional extra ``biotune[hf]`` (the ``datasets`` package, imported only here). The image
column is the dataset's one ``Image`` feature and the label its one ``ClassLabel`` (more than one of
either: an error naming them and the option that chooses); the dataset's own splits are used under
any of their names (``train``, ``validation``, ``test``…), other splits are left out with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BioTuneError
from .listing import Listing, Problems, ReadOptions, split_of
from .tables import cell_text, assemble, class_names_from

__all__ = ["HF_PREFIX", "is_saved_dataset", "read_hf"]

logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``save_to_disk`` (a ``DatasetDict`` or one ``Dataset``)."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())


def _datasets():
    try:
        import datasets
    except ImportError:
        raise BioTuneError("Hugging Face datasets need the 'datasets' package: pip install 'biotune[hf]'") from None
    return datasets


@dataclass(frozen=True)
class _RowImage:
    """The image in row ``index`` of one split (decoded on demand by ``datasets``' Image feature)."""

    table: Any
    column: str
    index: int
    name: str

    def load(self):
        return self.table[self.index][self.column]

    def __str__(self) -> str:
        return self.name


def _load(spec: str):
    datasets = _datasets()
    if spec.startswith(HF_PREFIX):
        ref = spec[len(HF_PREFIX):]
        name, _, config = ref.partition(":")
        if not name or name.count("/") > 1:
            raise BioTuneError(f"{spec}: expected hf:owner/name or hf:owner/name:config")
        try:
            return datasets.load_dataset(name, config or None), ref.replace("/", "_").replace(":", "_")
        except Exception as err:  # no network, no such dataset, a gated one...
            raise BioTuneError(
                f"{spec}: cannot load it from the Hugging Face Hub ({type(err).__name__}: {err}). Without a network, "
                "load it once where there is one and save it with save_to_disk, then give that folder"
            ) from None
    try:
        return datasets.load_from_disk(spec), Path(spec).name
    except Exception as err:
        raise BioTuneError(f"{spec}: not a readable saved Hugging Face dataset ({type(err).__name__}: {err})") from None


def _feature(features, kind, wanted: str | None, what: str, option: str, source: str) -> str | None:
    if wanted is not None:
        if wanted not in features:
            raise BioTuneError(f"{source}: no column {wanted!r} ({option}); the columns are: {', '.join(features)}")
        return wanted
    found = [k for k, f in features.items() if isinstance(f, kind)]
    if len(found) > 1:
        raise BioTuneError(f"{source}: {len(found)} {what} columns ({', '.join(found)}); choose one with {option}")
    return found[0] if found else None


def read_hf(spec: str, options: ReadOptions) -> Listing:
    """A Hugging Face dataset (``hf:…`` or a ``save_to_disk`` folder) as a listing.

    Raises:
        BioTuneError: ``datasets`` missing, the Hub unreachable, no or several image / label columns.
    """
    datasets = _datasets()
    loaded, name = _load(spec)
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    chosen: dict[str, Any] = {}
    for key, table in parts.items():
        split = split_of(key)
        if split is None or split in chosen:
            logger.warning("%s: split %r left out (not a train, validation or test split, or a second one)", spec, key)
            continue
        chosen[split] = (key, table)
    if "train" not in chosen:
        raise BioTuneError(f"{spec}: no training split among {', '.join(parts)}")
    features = chosen["train"][1].features
    image_col = _feature(features, datasets.Image, options.image_column, "image", "--image-column", spec)
    if image_col is None:
        raise BioTuneError(f"{spec}: no Image column among {', '.join(features)}; name it with --image-column")
    label_col = _feature(features, datasets.ClassLabel, options.label_column, "label (ClassLabel)", "--label-column",
                         spec)
    if label_col is None:
        raise BioTuneError(f"{spec}: no ClassLabel column among {', '.join(features)}; name one with --label-column")
    if options.group_column and options.group_column not in features:
        raise BioTuneError(f"{spec}: no column {options.group_column!r} (--group-column); the columns are: "
                           f"{', '.join(features)}")
    label_feature = features[label_col]
    class_labels = isinstance(label_feature, datasets.ClassLabel)
    refs, ids, lines, labels, splits, groups, stamps = [], [], [], [], [], [], []
    for split, (key, table) in chosen.items():
        images = table.select_columns([image_col])
        values = table[label_col]
        group_values = table[options.group_column] if options.group_column else None
        stamps.append(f"{key}\0{getattr(table, '_fingerprint', '')}")
        for i in range(len(table)):
            refs.append(_RowImage(images, image_col, i, f"{spec}[{key}][{i}]"))
            ids.append(str(i))
            lines.append(f"{key} row {i}")
            labels.append(label_feature.names[values[i]] if class_labels and values[i] is not None
                          and values[i] >= 0 else cell_text(values[i]))
            splits.append(split)
            if group_values is not None:
                groups.append(cell_text(group_values[i]))
    names = class_names_from(options.class_names) if options.class_names else None
    return assemble(name=name, source=spec, kind="Hugging Face dataset", refs=refs, ids=ids, lines=lines,
                    labels=labels, splits=splits, groups=groups if options.group_column else None,
                    class_names=names, problems=Problems(spec),
                    origin={s: f"the dataset's {key!r} split" for s, (key, _) in chosen.items()},
                    group_column=options.group_column, stamps=stamps,
                    fixed_classes=list(label_feature.names) if class_labels and names is None else None,
                    fix="choose the columns with --image-column and --label-column")
