"""Rows of an image array by index, read on demand: a split of a store without a copy, and the
store's files read without a memory map."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["ImageRows", "FileRows"]


class ImageRows:
    """Rows ``index`` of ``base`` (e.g. a memory-mapped uint8 N×H×W×C array), read when indexed.

    Indexing with a slice, an integer array or a tensor of positions returns a numpy array of
    those rows; the rows are read from ``base`` in ascending order (a mapped file is read
    forward) and returned in the order asked. ``np.asarray(rows)`` reads them all.

    Example:
        >>> rows = ImageRows(np.arange(10).reshape(5, 2), np.array([4, 1, 3]))
        >>> rows[[2, 0]].tolist(), len(rows), rows.shape
        ([[6, 7], [8, 9]], 3, (3, 2))
    """

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        if isinstance(base, ImageRows):  # rows of rows: compose the indices
            base, index = base.base, base.index[np.asarray(index)]
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index), *base.shape[1:])
        self.dtype = base.dtype
        self.ndim = base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> np.ndarray:
        rows = self.index[key] if isinstance(key, slice) else self.index[np.asarray(key, dtype=np.int64)]
        if rows.ndim == 0:
            return np.asarray(self.base[int(rows)])
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.base.shape[1:]), dtype=self.base.dtype)
        out[order] = self.base[rows[order]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class FileRows:
    """The rows of an ``.npy`` file, read with ``os.pread`` when indexed: a store's images without a map.

    A memory map would do the same reads, but every page a process touches through a map counts in
    its resident memory (``RssFile``) until the kernel reclaims it: an epoch over a 6 GB store shows
    6 GB more resident memory per process, shared or not. Pages read with ``pread`` sit in the page
    cache only (shared by every process, reclaimable), so a process's resident memory is what it
    really holds. Runs of consecutive rows are read in one call.

    Behaves as a read-only N×... array for what the store's users need: ``len``, ``shape``,
    ``dtype``, ``ndim``, ``nbytes``, indexing by an integer, a slice or an integer array (a numpy
    array of those rows), ``np.asarray`` (every row); pickles by path.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.filename = str(path)
        with open(self.filename, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{path}: not a C-ordered plain array")
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.nbytes = self._row * self.shape[0]
        self._fd: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, count: int, out: memoryview) -> None:
        if self._fd is None:
            self._fd = os.open(self.filename, os.O_RDONLY)
        done, want = 0, count * self._row
        while done < want:
            n = os.preadv(self._fd, [out[done:want]], self.offset + start * self._row + done)
            if n <= 0:
                raise OSError(f"{self.filename}: the file is shorter than its header says")
            done += n

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {key} of {len(self)}")
            return self[np.array([i])][0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                out = np.empty((max(0, stop - start), *self.shape[1:]), dtype=self.dtype)
                if len(out):
                    self._read(start, len(out), memoryview(out.reshape(-1).view(np.uint8)))
                return out
            key = np.arange(start, stop, step)
        rows = np.asarray(key, dtype=np.int64).reshape(-1)
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)}")
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        block = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = memoryview(block.reshape(len(rows), -1).view(np.uint8).reshape(-1)) if len(rows) else None
        i = 0
        while i < len(sorted_rows):  # one read per run of consecutive rows
            j = i + 1
            while j < len(sorted_rows) and sorted_rows[j] == sorted_rows[j - 1] + 1:
                j += 1
            self._read(int(sorted_rows[i]), j - i, flat[i * self._row:j * self._row])
            i = j
        out = np.empty_like(block)
        out[order] = block
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)
