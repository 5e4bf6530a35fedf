"""Rows of an image array by index, read on demand: a split of a memory-mapped store without a copy."""

from __future__ import annotations

import numpy as np

__all__ = ["ImageRows"]


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
