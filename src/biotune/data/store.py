"""A dataset store on disk: uint8 images in memory-mapped ``.npy`` files, written once, shared by all.

Every process that trains (the main one, each worker, each later run) maps the same files, so
the operating system holds one copy of the images in its page cache however many workers run,
and no process holds a float copy (batches become float on the device:
:mod:`biotune.training.images`). A store is written once per (source, read size):

- an ``.npz`` file (a zip: not mappable) is extracted array by array;
- an ImageFolder is decoded in parallel straight into the mapped files, with a progress bar;
- a named dataset's cached ``.npz`` is an ``.npz`` like any other.

Images keep the smaller of their stored size and the training size (a larger one is resized
once, on writing, with rounding to uint8). Writing goes to a temporary folder renamed into place
when complete, so a store that a kill interrupted is never used. The source's signature (size and
modification time of the file, or of every file of the folder) is kept with the store; a changed
source (files added, removed, resized, touched) is detected and the store written again.
"""

from __future__ import annotations

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
from .readers import ImageDataset, carve_test, read_image, scan_folder
from .rows import ImageRows

__all__ = ["STORE_VERSION", "store_path", "open_npz", "open_folder", "source_signature"]

logger = logging.getLogger(__name__)

STORE_VERSION = 1
_SPLITS = ("train", "val", "test")
_CHUNK = 1024  # images copied or resized at a time: bounds the memory of writing


def source_signature(source: Path) -> str:
    """A hash of what a source is made of: the file's size and modification time, or every
    file's relative path, size and modification time under a folder."""
    h = hashlib.sha1()
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"{path.relative_to(source)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        st = source.stat()
        h.update(f"{source.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def store_path(root: Path, source: Path, size: int) -> Path:
    """The store folder of ``source`` read at ``size`` px under ``root``."""
    key = hashlib.sha1(f"{source.resolve()}\0{size}\0{STORE_VERSION}".encode()).hexdigest()[:16]
    return Path(root) / f"{source.stem or source.name}-{size}px-{key}"


def _read(folder: Path, meta: dict | None = None) -> ImageDataset:
    meta = meta or json.loads((folder / "meta.json").read_text())
    arrays = {}
    for split in _SPLITS:
        if (folder / f"x_{split}.npy").is_file():
            arrays[split] = (np.load(folder / f"x_{split}.npy", mmap_mode="r"), np.load(folder / f"y_{split}.npy"))
    val = arrays.get("val")
    return ImageDataset(meta["name"], tuple(meta["classes"]), *arrays["train"], *arrays["test"],
                        x_val=None if val is None else val[0], y_val=None if val is None else val[1],
                        digest=meta.get("fingerprint"))


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
        meta.update(version=STORE_VERSION, signature=signature, fingerprint=_read(tmp, meta).fingerprint())
        (tmp / "meta.json").write_text(json.dumps(meta))
        old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
        if folder.exists():  # a stale store: moved aside, then removed (maps of it stay valid)
            os.replace(folder, old)
        os.replace(tmp, folder)
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


def open_folder(root_dir: Path, root: Path, size: int, *, progress: bool = False, workers: int | None = None) -> ImageDataset:
    """An ImageFolder as a store under ``root``: decoded once, in parallel, straight to disk."""
    from tqdm.auto import tqdm

    folder, signature = store_path(root, root_dir, size), source_signature(root_dir)
    if _valid(folder, signature):
        return _read(folder)
    classes, files = scan_folder(root_dir)  # refuses a folder that is not a dataset before anything is written

    def fill(tmp: Path) -> dict:
        tmp.mkdir()
        total = sum(len(f) for f in files.values())
        bar = tqdm(total=total, desc=f"storing {root_dir.name}", unit="img", disable=not progress, dynamic_ncols=True)
        labels = {}
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool, bar:  # PIL releases the GIL
            for split, items in files.items():
                if not items:
                    continue
                out = np.lib.format.open_memmap(tmp / f"x_{split}.npy", mode="w+", dtype=np.uint8,
                                                shape=(len(items), size, size, 3))
                for i, image in enumerate(pool.map(lambda item: read_image(item[0], size), items)):
                    out[i] = image
                    bar.update(1)
                out.flush()
                del out
                labels[split] = np.asarray([label for _, label in items], dtype=np.int64)
                np.save(tmp / f"y_{split}.npy", labels[split])
        if "test" not in labels:  # a flat folder: carve the test split (by index, chunk by chunk)
            x = np.load(tmp / "x_train.npy", mmap_mode="r")
            carved = carve_test(np.arange(len(x)), labels["train"], str(root_dir), classes)
            for split, (index, y) in carved.items():
                _copy_split(tmp, f"{split}.new", ImageRows(x, index), y, size)
            del x
            for split in ("train", "test"):
                os.replace(tmp / f"x_{split}.new.npy", tmp / f"x_{split}.npy")
                os.replace(tmp / f"y_{split}.new.npy", tmp / f"y_{split}.npy")
        return {"name": root_dir.name, "classes": list(classes), "source": str(root_dir)}

    _write(folder, signature, fill, sum(len(f) for f in files.values()) * size * size * 3)
    logger.info("ImageFolder %s stored once as uint8 in %s", root_dir, folder)
    return _read(folder)
