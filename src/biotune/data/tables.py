"""Label tables as a :class:`~biotune.data.listing.Listing`: ``.csv``, ``.tsv``, ``.parquet``,
``.jsonl`` files (read with pandas; parquet through pyarrow), and folders in Hugging Face's
``imagefolder`` convention (``metadata.csv`` / ``metadata.jsonl`` with a ``file_name`` column, at the
top or in each split folder).

Shapes this reads (see :class:`~biotune.data.listing.ReadOptions` for the options):

- HAM10000: ``image_id`` without an extension, the files in several folders (found by file stem
  under the image root), a ``dx`` label column, a ``lesion_id`` group column;
- Kaggle: ``id,label`` with integer labels and a file of class names;
- ISIC: one-hot class columns (``--label-column MEL,NV,BCC,…``);
- CheXpert: paths relative to the dataset's parent folder (``--image-root``).

Every problem a table has (a missing column, missing files, empty labels, a row listed twice with two
labels, unknown split values) is collected and reported in one message before anything is decoded.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BioTuneError
from .folders import IMAGE_EXTENSIONS, split_folders
from .listing import Listing, Problems, ReadOptions, SplitItems, split_of

__all__ = ["TABLE_SUFFIXES", "METADATA_FILES", "is_table", "metadata_file", "read_table", "table_records",
           "assemble", "class_names_from", "cell_text"]

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
IMAGE_COLUMNS = ("image", "file_name", "filename", "path", "image_id")
_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}


def is_table(path: Path) -> bool:
    return path.suffix.lower() in TABLE_SUFFIXES


def metadata_file(folder: Path) -> Path | None:
    """The HF ``imagefolder`` metadata file directly in ``folder``, if any."""
    return next((folder / n for n in METADATA_FILES if (folder / n).is_file()), None)


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise BioTuneError("reading a table needs pandas: pip install 'biotune[tables]'") from None
    return pd


def _read_frame(path: Path):
    """The table as a pandas DataFrame of strings (ids like ``007`` kept as written)."""
    pd = _pandas()
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise BioTuneError(f"{path}: the table is empty (0 bytes)")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_csv(path, sep=_separator(path), dtype=str, keep_default_na=False, encoding="utf-8-sig",
                                skipinitialspace=True)
    except ImportError as err:
        raise BioTuneError(f"{path}: reading it needs pyarrow ({err}): pip install 'biotune[tables]'") from None
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
        raise BioTuneError(f"{path}: not a readable table ({type(err).__name__}: {err})") from None
    if frame.empty:
        raise BioTuneError(f"{path}: the table has no rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _separator(path: Path) -> str:
    """``\\t`` for ``.tsv``; else the delimiter csv's sniffer finds among ``, ; \\t |`` (default ``,``)."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        head = fh.read(64 * 1024)
    try:
        return csv.Sniffer().sniff(head.splitlines()[0] if head else "", delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def cell_text(value: Any) -> str:
    """A cell as text: ``None``/NaN → ``""``, integral floats without ``.0``."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


def _column(frame_columns: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str, source: str,
            option: str, required: bool = True) -> str | None:
    """The column ``wanted`` (any case) or the first of ``defaults`` present."""
    by_lower = {c.lower(): c for c in frame_columns}
    if wanted is not None:
        found = wanted if wanted in frame_columns else by_lower.get(wanted.lower())
        if found is None:
            raise BioTuneError(f"{source}: no column {wanted!r} ({option}); the columns are: {', '.join(frame_columns)}")
        return found
    for name in defaults:
        found = name if name in frame_columns else by_lower.get(name.lower())
        if found is not None:
            return found
    if required:
        raise BioTuneError(f"{source}: no {what} column (looked for {', '.join(defaults)}); the columns are: "
                           f"{', '.join(frame_columns)}; name it with {option}")
    return None


def class_names_from(path: str | Path) -> dict[str, str]:
    """Label → class name from a text file (one name per line, line i naming label i) or JSON
    (``{"0": "cbb", …}`` or a list)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise BioTuneError(f"--class-names {path}: cannot read it ({err})") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except ValueError as err:
            raise BioTuneError(f"--class-names {path}: not valid JSON ({err})") from None
        if isinstance(data, list):
            return {str(i): str(n) for i, n in enumerate(data)}
        if isinstance(data, dict):
            return {str(k).strip(): str(v) for k, v in data.items()}
        raise BioTuneError(f"--class-names {path}: expected a JSON object {{label: name}} or a list of names")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise BioTuneError(f"--class-names {path}: no names in it")
    return {str(i): n for i, n in enumerate(names)}


def _classes(values: list[str], names: dict[str, str] | None) -> tuple[list[str], dict[str, int]]:
    """Class names and label value → index: integer labels in numeric order, strings sorted."""
    distinct = sorted(set(values))
    try:
        distinct = sorted(distinct, key=int)
        numeric = True
    except ValueError:
        numeric = False
    if names is not None:
        if numeric:
            return [names.get(str(int(v)), v) for v in distinct], {v: i for i, v in enumerate(distinct)}
        return [names.get(v, v) for v in distinct], {v: i for i, v in enumerate(distinct)}
    return distinct, {v: i for i, v in enumerate(distinct)}


def _stem_index(root: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for p in root.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            index.setdefault(p.stem, []).append(p)
    return index


def table_records(path: Path, options: ReadOptions, *, labels_required: bool = True) -> dict[str, Any]:
    """The table's columns that matter, as lists of text: ``image``, ``label`` (or ``None``), ``split``,
    ``group``, with each row's line for messages; and the column names used."""
    frame = _read_frame(path)
    columns = list(frame.columns)
    source = str(path)
    image_col = _column(columns, options.image_column, IMAGE_COLUMNS, "image", source, "--image-column")
    onehot = options.labels()
    label_col = None
    if onehot is not None:
        missing = [c for c in onehot if _column(columns, c, (), "", source, "--label-column", required=False) is None]
        if missing:
            raise BioTuneError(f"{source}: no column(s) {', '.join(map(repr, missing))} (--label-column); the "
                               f"columns are: {', '.join(columns)}")
    else:
        label_col = _column(columns, options.label_column, ("label",), "label", source, "--label-column",
                            required=labels_required)
    split_col = _column(columns, options.split_column, ("split",), "split", source, "--split-column", required=False)
    group_col = (None if options.group_column is None else
                 _column(columns, options.group_column, (), "group", source, "--group-column"))
    first = 1 if path.suffix.lower() == ".jsonl" else 2  # the header is line 1 of a csv
    where = "row" if path.suffix.lower() == ".parquet" else "line"
    records: dict[str, Any] = {
        "image": [cell_text(v) for v in frame[image_col].tolist()],
        "line": [f"{where} {i + first}" for i in range(len(frame))],
        "split": None if split_col is None else [cell_text(v) for v in frame[split_col].tolist()],
        "group": None if group_col is None else [cell_text(v) for v in frame[group_col].tolist()],
        "columns": {"image": image_col, "label": label_col or (",".join(onehot) if onehot else None),
                    "split": split_col, "group": group_col},
    }
    if onehot is not None:
        matrix = np.zeros((len(frame), len(onehot)))
        bad: list[int] = []
        for j, name in enumerate(onehot):
            col = _column(columns, name, (), "", source, "--label-column")
            for i, v in enumerate(frame[col].tolist()):
                try:
                    matrix[i, j] = float(cell_text(v) or "nan")
                except ValueError:
                    bad.append(i)
        positive = np.nan_to_num(matrix) > 0
        labels = ["" for _ in range(len(frame))]
        for i in range(len(frame)):
            if positive[i].sum() == 1 and i not in bad:
                labels[i] = onehot[int(positive[i].argmax())]
        records["label"] = labels
        records["onehot_bad"] = [i for i in range(len(frame)) if positive[i].sum() != 1 or i in bad]
        records["classes"] = onehot
    elif label_col is not None:
        records["label"] = [cell_text(v) for v in frame[label_col].tolist()]
    else:
        records["label"] = None
    return records


def _resolve_images(values: list[str], lines: list[str], root: Path, problems: Problems) -> list[Path | None]:
    """Each image value as a file: a path (absolute, or relative to ``root``), or a file stem found
    anywhere under ``root`` (HAM10000's ids)."""
    stems: dict[str, list[Path]] | None = None
    out: list[Path | None] = []
    for value, line in zip(values, lines):
        if not value:
            problems.add("empty image value", line)
            out.append(None)
            continue
        candidate = Path(value).expanduser()
        candidate = candidate if candidate.is_absolute() else root / candidate
        if candidate.suffix.lower() in IMAGE_EXTENSIONS:
            if candidate.is_file():
                out.append(candidate)
            else:
                problems.add("missing file", f"{line}: {candidate}")
                out.append(None)
            continue
        if stems is None:
            stems = _stem_index(root)
        found = stems.get(Path(value).name, [])
        if len(found) == 1:
            out.append(found[0])
        elif not found:
            problems.add("missing file", f"{line}: no image named {value}.* under {root}")
            out.append(None)
        else:
            problems.add("ambiguous image id", f"{line}: {value} matches {found[0]} and {found[1]}")
            out.append(None)
    return out


def _split_values(values: list[str], lines: list[str], column: str, problems: Problems) -> list[str]:
    lowered = {v.strip().lower() for v in values}
    if lowered <= (_TRUE | _FALSE):  # a boolean "is validation" column
        return ["val" if v.strip().lower() in _TRUE else "train" for v in values]
    out = []
    for value, line in zip(values, lines):
        split = split_of(value)
        if split is None:
            problems.add(f"unknown value in split column {column!r}", f"{line}: {value!r}")
        out.append(split or "")
    return out


def assemble(*, name: str, source: str, kind: str, refs: list, ids: list[str], lines: list[str],
             labels: list[str] | None, splits: list[str] | None, groups: list[str] | None,
             class_names: dict[str, str] | None, problems: Problems, origin: dict[str, str],
             group_column: str | None, stamps: list[str], fixed_classes: list[str] | None = None,
             fix: str = "", require_train: bool = True) -> Listing:
    """A listing from per-row values, after every check: empty labels and groups, a row listed twice
    with two labels (listed twice with one label: kept once, with a note). Raises all problems at once."""
    n = len(refs)
    notes: list[str] = []
    if labels is not None:
        for i in range(n):
            if labels[i] == "":
                problems.add("empty label", lines[i])
    if groups is not None:
        for i in range(n):
            if groups[i] == "":
                problems.add("empty group", lines[i])
    seen: dict[str, int] = {}
    keep = []
    repeats = 0
    for i in range(n):
        key = str(refs[i]) if refs[i] is not None else f"\0{i}"
        j = seen.get(key)
        if j is None:
            seen[key] = i
            keep.append(i)
        elif labels is not None and labels[i] != labels[j]:
            problems.add("image listed twice with two labels",
                         f"{lines[j]} ({labels[j]}) and {lines[i]} ({labels[i]}): {ids[i]}")
        else:
            repeats += 1
    problems.raise_if_any(fix)
    if repeats:
        notes.append(f"{repeats} row(s) list an image already listed with the same label: kept once")
        logger.warning("%s: %d row(s) list an image already listed with the same label: kept once", source, repeats)
    if labels is None:
        classes, index = [], {}
        y = np.full(len(keep), -1, dtype=np.int64)
    else:
        values = [labels[i] for i in keep]
        if fixed_classes is not None:
            classes, index = list(fixed_classes), {c: i for i, c in enumerate(fixed_classes)}
        else:
            classes, index = _classes(values, class_names)
        y = np.asarray([index[v] for v in values], dtype=np.int64)
    which = [splits[i] for i in keep] if splits is not None else ["train"] * len(keep)
    by_split: dict[str, SplitItems] = {}
    for split in ("train", "val", "test"):
        rows = [k for k, s in enumerate(which) if s == split]
        if not rows:
            continue
        pick = [keep[k] for k in rows]
        by_split[split] = SplitItems([refs[i] for i in pick], y[rows], [f"{lines[i]}: {refs[i]}" for i in pick],
                                     [ids[i] for i in pick], None if groups is None else [groups[i] for i in pick])
    if labels is not None and require_train and "train" not in by_split:
        raise BioTuneError(f"{source}: no training rows (every row is in another split)")
    return Listing(name, source, kind, tuple(classes), by_split, origin, group_column, stamps, notes)


def read_table(path: Path, options: ReadOptions, *, image_root: Path | None = None, split: str | None = None,
               labels_required: bool = True, name: str | None = None) -> Listing:
    """A table (or an HF ``metadata`` file) as a listing; ``split`` puts every row in that split.

    Raises:
        BioTuneError: a missing column, missing or ambiguous files, empty labels, a row listed twice
            with two labels, unknown split values: all of them in one message.
    """
    records = table_records(path, options, labels_required=labels_required)
    cols = records["columns"]
    root = Path(options.image_root).expanduser() if options.image_root else (image_root or path.parent)
    if not root.is_dir():
        raise BioTuneError(f"--image-root {root} is not a folder")
    problems = Problems(str(path))
    for i in records.get("onehot_bad", []):
        problems.add("row without exactly one positive one-hot label", records["line"][i])
    files = _resolve_images(records["image"], records["line"], root, problems)
    split_values = None
    origin: dict[str, str] = {}
    if split is not None:
        split_values = [split] * len(files)
        origin[split] = f"{path.parent.name}/{path.name}"
    elif records["split"] is not None:
        split_values = _split_values(records["split"], records["line"], cols["split"], problems)
        for s in ("train", "val", "test"):
            origin[s] = f"column {cols['split']} = {s}"
    else:
        origin["train"] = "all rows"
    names = class_names_from(options.class_names) if options.class_names else None
    stamps = [f"{path.resolve()}\0{path.stat().st_size}\0{path.stat().st_mtime_ns}", f"root\0{root.resolve()}",
              json.dumps(cols, sort_keys=True)]
    for f in files:
        if f is not None:
            st = f.stat()
            stamps.append(f"{f}\0{st.st_size}\0{st.st_mtime_ns}")
    listing = assemble(name=name or path.stem, source=str(path), kind="table", refs=files, ids=records["image"],
                       lines=records["line"], labels=records["label"], splits=split_values, groups=records["group"],
                       class_names=names, problems=problems, origin=origin, group_column=cols["group"],
                       stamps=stamps, fixed_classes=records.get("classes") if names is None else None,
                       require_train=split is None,
                       fix="correct the table (or the files), or choose the columns with --image-column, "
                           "--label-column, --split-column and the folder with --image-root")
    label_part = "" if cols["label"] is None else f", label column {cols['label']!r}"
    split_part = "" if cols["split"] is None else f", split column {cols['split']!r}"
    rows = sum(len(s) for s in listing.splits.values())
    listing.notes.insert(0, f"{rows} rows; image column {cols['image']!r}{label_part}{split_part}; images under {root}")
    return listing


def read_metadata_folder(folder: Path, options: ReadOptions) -> Listing | None:
    """A folder in HF's ``imagefolder`` convention (``metadata.csv``/``.jsonl`` at the top, or in each
    split folder), or ``None`` when it has no metadata file."""
    opts = options
    top = metadata_file(folder)
    layout = {} if top is not None else split_folders(folder)
    metas = [top] if top is not None else [metadata_file(p) for p in layout.values()]
    if not metas or not all(metas):
        return None
    if options.label_column is None and not any(c.lower() == "label" for c in _read_frame(metas[0]).columns):
        # Metadata without labels (captions, extra fields): the class folders label the images, as in HF.
        logger.warning("%s has no label column: the images are labelled by their class folders", metas[0])
        return None
    if top is not None:
        return read_table(top, opts, image_root=folder, name=folder.name)
    parts = {s: read_table(metadata_file(p), opts, image_root=p, split=s, name=folder.name) for s, p in layout.items()}
    classes = sorted({c for part in parts.values() for c in part.classes})
    try:
        classes = sorted(classes, key=int)
    except ValueError:
        pass
    merged: dict[str, SplitItems] = {}
    for split, part in parts.items():
        items = part.splits[split]
        remap = np.asarray([classes.index(c) for c in part.classes], dtype=np.int64)
        items.labels = remap[items.labels]
        merged[split] = items
    return Listing(folder.name, str(folder), "imagefolder with metadata", tuple(classes), merged,
                   {s: f"folder {p.name}/ (metadata)" for s, p in layout.items()},
                   next(iter(parts.values())).group_column,
                   [s for part in parts.values() for s in part.stamps],
                   [n for part in parts.values() for n in part.notes])

