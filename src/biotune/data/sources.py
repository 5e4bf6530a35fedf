"""Which reader a path or address needs, and archives read without the user unpacking them.

A source is an ImageFolder (with split folders under any of their names), a folder in Hugging Face's
``imagefolder`` convention (``metadata.csv``/``.jsonl``), a folder written by ``save_to_disk``, a label
table (``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``), ``hf:owner/name[:config]``, or a ``.zip`` /
``.tar`` / ``.tar.gz`` holding any of the folder or table kinds. Each becomes a
:class:`~biotune.data.listing.Listing`.
"""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
from pathlib import Path

from ..errors import BioTuneError
from .folders import scan_folder
from .hub import HF_PREFIX, is_saved_dataset, read_hf
from .listing import Listing, ReadOptions
from .tables import TABLE_SUFFIXES, is_table, read_metadata_folder, read_table

__all__ = ["ARCHIVE_SUFFIXES", "is_archive", "is_listed_source", "list_source", "archive_signature", "unpack"]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_listed_source(spec: str) -> bool:
    """Whether ``spec`` is read through a listing (everything but names, digits and ``.npz``)."""
    if spec.startswith(HF_PREFIX):
        return True
    path = Path(spec).expanduser()
    return path.is_dir() or is_table(path) or is_archive(path)


def list_source(spec: str | Path, options: ReadOptions, *, name: str | None = None) -> Listing:
    """The listing of a folder, table or Hugging Face dataset (an archive: unpack it first, :func:`unpack`).

    Raises:
        BioTuneError: the source does not exist or is not one of the kinds above.
    """
    if str(spec).startswith(HF_PREFIX):
        return read_hf(str(spec), options)
    path = Path(spec).expanduser()
    if not path.exists():
        raise BioTuneError(f"dataset {spec} does not exist")
    if path.is_dir():
        if is_saved_dataset(path):
            return read_hf(str(path), options)
        listing = read_metadata_folder(path, options)
        if listing is None:
            tables = sorted(p for p in path.iterdir() if p.is_file() and is_table(p))
            if tables and _is_archive_root(path):  # an archive of a table and its images
                if len(tables) > 1:
                    raise BioTuneError(f"{spec}: the archive holds {len(tables)} tables "
                                       f"({', '.join(p.name for p in tables)}); keep one, or unpack it and give the table")
                listing = read_table(tables[0], options)
            else:
                listing = scan_folder(path)
    elif is_table(path):
        listing = read_table(path, options)
    else:
        raise BioTuneError(f"dataset {spec}: not a folder, a table ({', '.join(TABLE_SUFFIXES)}) or an archive")
    if name is not None:
        listing.name = name
    return listing


def _is_archive_root(path: Path) -> bool:
    return (path / ".biotune-unpacked").is_file()


def archive_signature(path: Path) -> str:
    """A hash of the archive's bytes (an edited archive rewrites its store)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:20]


def unpack(path: Path, into: Path) -> Path:
    """Unpack ``path`` into the folder ``into`` (paths that would leave it are refused) and return the
    dataset's root inside: the single top-level folder when there is one.

    Raises:
        BioTuneError: not a readable archive.
    """
    into.mkdir(parents=True, exist_ok=True)
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                archive.extractall(into)  # zipfile drops absolute paths and '..'
        else:
            with tarfile.open(path) as archive:
                if hasattr(tarfile, "data_filter"):
                    archive.extractall(into, filter="data")
                else:  # pragma: no cover - Pythons before the extraction filters
                    for member in archive.getmembers():
                        target = (into / member.name).resolve()
                        if not str(target).startswith(str(into.resolve())) or member.issym() or member.islnk():
                            raise BioTuneError(f"{path}: member {member.name} would be written outside the folder")
                    archive.extractall(into)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as err:
        raise BioTuneError(f"{path}: not a readable archive ({type(err).__name__}: {err})") from None
    root = into
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            break
    (root / ".biotune-unpacked").write_text(str(path))
    return root
