"""A dataset store on disk: uint8 images in memory-mapped ``.npy`` files, written once, shared by all.

Every process that trains (the main one, each worker, each later run) maps the same files, so
the operating system holds one copy of the images in its page cache however many workers run,
and no process holds a float copy (batches become float on the device:
:mod:`biotune.training.images`). A store is written once per (source, read size, reading options):

- an ``.npz`` file (a zip: not mappable) is extracted array by array;
- a :class:`~biotune.data.listing.Listing` (an ImageFolder, a table, an unpacked archive, a Hugging
  Face dataset) is decoded in parallel threads, with a progress bar, each image written with
  ``pwrite`` (not through a map, so the rows written never count in the writer's resident memory);
  every undecodable file is collected and reported at the end (or dropped, when asked);
- a named dataset's cached ``.npz`` is an ``.npz`` like any other.

Images keep the smaller of their stored size and the training size (a larger one is resized
once, on writing, with rounding to uint8). Writing goes to a temporary folder renamed into place
when complete, so a store that a kill interrupted is never used. The source's signature (size and
modification time of the file, of every image a folder or table holds and of the table itself, an
archive's bytes, a Hugging Face dataset's fingerprints) is kept with the store; a changed source
(files added, removed, resized, touched, relabelled) is detected and the store written again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import BioTuneError
from .listing import Listing, Problems, read_ref
from .readers import ImageDataset
from .rows import FileRows

__all__ = ["STORE_VERSION", "store_path", "open_npz", "open_listing", "decode_listing", "open_stored", "source_signature",
           "report_lines"]

logger = logging.getLogger(__name__)

STORE_VERSION = 2  # 2: groups, the read report, tables and archives
_SPLITS = ("train", "val", "test")
_CHUNK = 1024  # images copied or resized at a time: bounds the memory of writing


def source_signature(source: Path) -> str:
    """A hash of what a file is made of: its size and modification time."""
    st = source.stat()
    return hashlib.sha1(f"{source.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]


def store_path(root: Path, source: Path | str, size: int, options: str = "") -> Path:
    """The store folder of ``source`` (a path, or an address such as ``hf:owner/name``) read at ``size``
    px with reading ``options`` (:meth:`ReadOptions.key`) under ``root``."""
    ident = str(Path(source).resolve()) if isinstance(source, Path) else str(source)
    key = hashlib.sha1(f"{ident}\0{size}\0{STORE_VERSION}\0{options}".encode()).hexdigest()[:16]
    stem = source.stem or source.name if isinstance(source, Path) else source.split(":")[-1].replace("/", "_")
    return Path(root) / f"{stem}-{size}px-{key}"


def _read(folder: Path, meta: dict | None = None) -> ImageDataset:
    meta = meta or json.loads((folder / "meta.json").read_text())
    arrays, groups = {}, {}
    for split in _SPLITS:
        if (folder / f"x_{split}.npy").is_file():
            arrays[split] = (FileRows(folder / f"x_{split}.npy"), np.load(folder / f"y_{split}.npy"))
        if (folder / f"g_{split}.npy").is_file():
            groups[split] = np.load(folder / f"g_{split}.npy")
    val = arrays.get("val")
    return ImageDataset(meta["name"], tuple(meta["classes"]), *arrays["train"], *arrays["test"],
                        x_val=None if val is None else val[0], y_val=None if val is None else val[1],
                        digest=meta.get("fingerprint"), g_train=groups.get("train"), g_val=groups.get("val"),
                        g_test=groups.get("test"), report=meta.get("report"))


def _valid(folder: Path, signature: str) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == STORE_VERSION and meta.get("signature") == signature


def _write(folder: Path, signature: str, fill: Callable[[Path], dict], need: int) -> None:
    """Write a store of about ``need`` bytes into a temporary sibling with ``fill(tmp) -> meta``, then
    rename it into place.

    Raises:
        BioTuneError: the disk has less than ``need`` free; nothing is written.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if need > free:
        raise BioTuneError(
            f"the dataset store needs about {need / 2**30:.2f} GB on disk but {free / 2**30:.2f} GB is free in "
            f"{folder.parent}; point --cache-dir at a larger disk (the store goes to <cache-dir>/store) or use a "
            "smaller --image-size"
        )
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        meta = fill(tmp)
        # The images' fingerprint (part of the memo and cache keys), read once here, not at every start.
        meta.update(version=STORE_VERSION, signature=signature, fingerprint=_streamed_fingerprint(_read(tmp, meta)))
        (tmp / "meta.json").write_text(json.dumps(meta))
        old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
        if folder.exists():  # a stale store: moved aside, then removed (maps of it stay valid)
            with contextlib.suppress(FileNotFoundError):  # another process moved it first
                os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote it in the meantime: the same images if the same signature
            theirs = folder / "meta.json"
            if not (theirs.is_file() and json.loads(theirs.read_text()).get("signature") == signature):
                raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resized(chunk: np.ndarray, size: int) -> np.ndarray:
    """uint8 N×H×W×C → N×size×size×C (bilinear, antialiased), rounded back to uint8."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, _CHUNK):
        yield slice(start, min(n, start + _CHUNK))


def _target(shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    """The stored shape: the smaller of the stored size and the training size."""
    n, h, w, c = shape
    return (n, size, size, c) if min(h, w) > size else (n, h, w, c)


def _copy_split(tmp: Path, split: str, x, y: np.ndarray, size: int) -> None:
    out = np.lib.format.open_memmap(tmp / f"x_{split}.npy", mode="w+", dtype=np.uint8, shape=_target(x.shape, size))
    for part in _chunks(len(x)):
        chunk = np.asarray(x[part])
        out[part] = chunk if chunk.shape[1:] == out.shape[1:] else _resized(chunk, size)
    out.flush()
    del out
    np.save(tmp / f"y_{split}.npy", np.asarray(y, dtype=np.int64))


def _stored_side(path: Path) -> int | None:
    """The smaller side of an ``.npz``'s training images, read from the array's header alone."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("x_train.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = header(f)[0]
        return int(min(shape[1:3])) if len(shape) >= 3 else None
    except Exception:  # unreadable here: the reader says what is wrong below
        return None


def _npz_bytes(path: Path) -> int:
    """The uncompressed size of an ``.npz``'s image arrays (what a store of them takes at most)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(i.file_size for i in archive.infolist() if i.filename.startswith("x_"))
    except (OSError, zipfile.BadZipFile):
        return 0


def open_npz(path: Path, root: Path, size: int, read: Callable[[Path], ImageDataset]) -> ImageDataset:
    """``path`` (an ``.npz``) as a store under ``root``: written once (checked by ``read``), then mapped.

    Stored at the smaller of the images' side and ``size``, so every training size above the
    stored one shares one store."""
    side = _stored_side(path)
    size = min(size, side) if side else size
    folder, signature = store_path(root, path, size), source_signature(path)
    if not _valid(folder, signature):
        def fill(tmp: Path) -> dict:
            tmp.mkdir()
            ds = read(path)  # the readers' checks; one array at a time is the .npz's unit of reading
            for split, x, y in (("train", ds.x_train, ds.y_train), ("val", ds.x_val, ds.y_val),
                                ("test", ds.x_test, ds.y_test)):
                if x is not None:
                    _copy_split(tmp, split, x, y, size)
            return {"name": ds.name, "classes": list(ds.classes), "source": str(path)}

        _write(folder, signature, fill, _npz_bytes(path))
        logger.info("dataset %s stored once as uint8 in %s", path, folder)
    return _read(folder)




def _streamed_fingerprint(ds: ImageDataset) -> str:
    """``ds.fingerprint()`` computed by reading the store's files in chunks, not through their maps:
    the pages read stay out of this process's resident memory, whatever the store's size."""
    h = hashlib.sha1()
    for arr in ds._hashed():
        h.update(str(arr.shape).encode())
        if isinstance(arr, (np.memmap, FileRows)):
            with open(arr.filename, "rb") as fh:
                fh.seek(arr.offset)
                left = arr.nbytes
                while left:
                    block = fh.read(min(left, 16 << 20))
                    h.update(block)
                    left -= len(block)
        else:
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def _window(pool: ThreadPoolExecutor, fn, items, ahead: int):
    """``pool.map(fn, items)`` with at most ``ahead`` results pending: memory bounded for any count."""
    from collections import deque

    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _decode(ref, size: int):
    try:
        return read_ref(ref, size)
    except BioTuneError as err:
        return str(err)


class _Sink:
    """Rows of one split written as they come: into an in-memory array, or with ``pwrite`` into a
    ``.npy`` file (no map, so the rows written do not stay in this process's resident memory)."""

    def __init__(self, n: int, size: int, path: Path | None) -> None:
        self.shape, self.path = (n, size, size, 3), path
        self.row = size * size * 3
        if path is None:
            self.array = np.empty(self.shape, dtype=np.uint8)
            return
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=self.shape)
        self.offset = out.offset
        del out
        self.fh = open(path, "r+b")

    def put(self, i: int, image: np.ndarray) -> None:
        if self.path is None:
            self.array[i] = image
        else:
            os.pwrite(self.fh.fileno(), np.ascontiguousarray(image).tobytes(), self.offset + i * self.row)

    def keep(self, rows: list[int]):
        """Only ``rows`` (the readable images), in order; the finished array (or ``None`` for a file)."""
        if self.path is None:
            return self.array if len(rows) == self.shape[0] else self.array[rows]
        if len(rows) < self.shape[0]:
            kept = self.path.with_name(self.path.stem + ".kept.npy")
            out = np.lib.format.open_memmap(kept, mode="w+", dtype=np.uint8, shape=(len(rows), *self.shape[1:]))
            offset = out.offset
            del out
            with open(kept, "r+b") as dst:
                for j, i in enumerate(rows):
                    os.pwrite(dst.fileno(), os.pread(self.fh.fileno(), self.row, self.offset + i * self.row),
                              offset + j * self.row)
            self.fh.close()
            os.replace(kept, self.path)
        else:
            self.fh.close()
        return None


def _codes(listing: Listing) -> dict[str, np.ndarray]:
    """Group names as int codes shared by every split."""
    names = sorted({g for items in listing.splits.values() for g in (items.groups or [])})
    index = {g: i for i, g in enumerate(names)}
    return {s: np.asarray([index[g] for g in items.groups], dtype=np.int64)
            for s, items in listing.splits.items() if items.groups is not None}


def _decode_all(listing: Listing, size: int, folder: Path | None, *, skip_unreadable: bool, progress: bool,
                workers: int | None) -> tuple[dict[str, tuple], dict]:
    """Decode every image of every split (in parallel threads) into arrays or ``.npy`` files.

    Returns the arrays by split (``None`` for images written to files) with labels and groups, and
    the read report. Every unreadable file is collected first, then reported in one message, unless
    ``skip_unreadable`` drops them (one warning).
    """
    from tqdm.auto import tqdm

    problems = Problems(listing.source)
    total = sum(len(items) for items in listing.splits.values())
    bar = tqdm(total=total, desc=f"storing {listing.name}", unit="img", disable=not progress, dynamic_ncols=True)
    codes = _codes(listing)
    out: dict[str, tuple] = {}
    digests: dict[str, tuple[str, str]] = {}  # digest -> (split, name) of its first image
    pairs: list[tuple[str, str]] = []
    skipped: list[str] = []
    threads = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool, bar:  # PIL releases the GIL
        for split, items in listing.splits.items():
            sink = _Sink(len(items), size, None if folder is None else folder / f"x_{split}.npy")
            rows: list[int] = []
            for i, result in enumerate(_window(pool, lambda ref: _decode(ref, size), items.refs, 4 * threads)):
                bar.update(1)
                if isinstance(result, str):
                    (skipped.append(items.names[i]) if skip_unreadable else
                     problems.add("file PIL cannot decode", f"{items.names[i]}: cannot read image ({result})"))
                    continue
                image, digest = result
                sink.put(i, image)
                rows.append(i)
                first = digests.setdefault(digest, (split, items.names[i]))
                if first[1] != items.names[i] and (first[0] != split or (split == "train" and "val" not in listing.splits)):
                    pairs.append((first[1], items.names[i]))
            labels = np.asarray(items.labels, dtype=np.int64)[rows]
            groups = codes[split][rows] if split in codes else None
            out[split] = (sink.keep(rows), labels, groups)
    problems.raise_if_any("fix or remove these files, or drop them with --skip-unreadable")
    if skipped:
        logger.warning("%s: %d unreadable file(s) skipped (--skip-unreadable): %s%s", listing.source, len(skipped),
                       ", ".join(skipped[:5]), " …" if len(skipped) > 5 else "")
    if pairs and listing.group_column is None:
        logger.warning(
            "%s: %d image(s) are byte-identical to another in %s, e.g. %s; copies on both sides of a split inflate "
            "validation and test accuracy: give a --group-column (e.g. the patient or lesion) to keep them together",
            listing.source, len(pairs), "another split" if "val" in listing.splits else "another split or in train "
            "(validation is carved from it)", "; ".join(f"{a} = {b}" for a, b in pairs[:3]))
    report = {
        "kind": listing.kind, "source": listing.source, "origin": listing.origin, "notes": listing.notes,
        "group_column": listing.group_column,
        "groups": int(max((c.max() for c in codes.values()), default=-1) + 1),
        "skipped": {"count": len(skipped), "first": skipped[:5]},
        "identical": {"count": len(pairs), "first": [list(p) for p in pairs[:5]]},
    }
    return out, report


def _check_decoded(listing: Listing, out: dict) -> None:
    """What every dataset must have after decoding: 2 classes or more, each with training images."""
    if len(listing.classes) < 2:
        raise BioTuneError(f"{listing.source}: a classification dataset needs at least 2 classes, "
                           f"got {len(listing.classes)}")
    for split, (_, labels, _) in out.items():
        if split in ("train", "test") and len(labels) == 0:
            raise BioTuneError(f"{listing.source}: no readable image left in the {split} split")
    counts = np.bincount(out["train"][1], minlength=len(listing.classes))
    empty = [listing.classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise BioTuneError(f"{listing.source}: class(es) without training images: {', '.join(empty[:10])}")


def decode_listing(listing: Listing, size: int, *, skip_unreadable: bool = False, progress: bool = False,
                   workers: int | None = None) -> ImageDataset:
    """A listing decoded into memory (no store): the test split carved when it has none."""
    from .readers import make_dataset

    listing = listing.carve_test()
    out, report = _decode_all(listing, size, None, skip_unreadable=skip_unreadable, progress=progress,
                              workers=workers)
    _check_decoded(listing, out)
    ds = make_dataset(listing.name, listing.source, listing.classes, {s: (x, y) for s, (x, y, _) in out.items()})
    groups = {f"g_{s}": g for s, (_, _, g) in out.items() if g is not None}
    return dataclasses.replace(ds, report=report, **groups)


def open_listing(listing: Listing, root: Path, size: int, *, options: str = "", skip_unreadable: bool = False,
                 progress: bool = False, workers: int | None = None, signature: str | None = None,
                 source: Path | str | None = None) -> ImageDataset:
    """A listing as a store under ``root``: decoded once, in parallel, straight to disk, then mapped.

    ``signature`` and ``source`` replace the listing's own (an archive is known by its bytes, not by
    the files unpacked from it).
    """
    folder = store_path(root, source if source is not None else _source_key(listing), size, options)
    signature = signature or listing.signature()
    if _valid(folder, signature):
        return _read(folder)
    listing = listing.carve_test()

    def fill(tmp: Path) -> dict:
        tmp.mkdir()
        out, report = _decode_all(listing, size, tmp, skip_unreadable=skip_unreadable, progress=progress,
                                  workers=workers)
        _check_decoded(listing, out)
        for split, (_, labels, groups) in out.items():
            np.save(tmp / f"y_{split}.npy", labels)
            if groups is not None:
                np.save(tmp / f"g_{split}.npy", groups)
        return {"name": listing.name, "classes": list(listing.classes), "source": listing.source, "report": report}

    _write(folder, signature, fill, sum(len(i) for i in listing.splits.values()) * size * size * 3)
    logger.info("%s stored once as uint8 in %s", listing.source, folder)
    return _read(folder)


def open_stored(source: Path | str, root: Path, size: int, options: str, signature: str) -> ImageDataset | None:
    """The store of ``source`` when it exists and matches ``signature``, else ``None``."""
    folder = store_path(root, source, size, options)
    return _read(folder) if _valid(folder, signature) else None


def _source_key(listing: Listing) -> Path | str:
    return listing.source if listing.source.startswith("hf:") else Path(listing.source)


def report_lines(ds: ImageDataset) -> list[str]:
    """How a dataset was read, for ``--dry-run``: kind, classes with counts, split sizes and where each
    came from, groups, files skipped, identical images across splits."""
    r = ds.report or {}
    lines = [f"read as {r.get('kind', 'arrays')}: {r.get('source', ds.name)}"]
    lines += [f"  {n}" for n in r.get("notes", [])]
    counts = np.bincount(ds.y_train, minlength=ds.num_classes)
    shown = ", ".join(f"{c} {n}" for c, n in zip(ds.classes[:12], counts[:12]))
    lines.append(f"  {ds.num_classes} classes (train images): {shown}{' …' if ds.num_classes > 12 else ''}")
    origin = r.get("origin", {})
    for split in _SPLITS:
        y = getattr(ds, f"y_{split}")
        if y is not None:
            lines.append(f"  {split}: {len(y)} images ({origin.get(split, 'the source')})")
    if ds.y_val is None:
        lines.append("  val: carved from train by --val-fraction (stratified, the run's seed"
                     f"{', groups kept apart' if ds.g_train is not None else ''})")
    if r.get("group_column"):
        lines.append(f"  groups: {r['groups']} in column {r['group_column']!r} (no group on two sides of a split or "
                     "fold)")
    skipped = r.get("skipped", {})
    if skipped.get("count"):
        lines.append(f"  skipped (unreadable): {skipped['count']}: {', '.join(skipped['first'])}")
    same = r.get("identical", {})
    if same.get("count"):
        lines.append(f"  identical images across splits: {same['count']} (e.g. {' = '.join(same['first'][0])})")
    return lines
