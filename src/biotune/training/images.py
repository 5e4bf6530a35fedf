"""Images that stay uint8 until a batch of them is on the device.

:class:`DeviceImages` stands where a preprocessed float tensor used to: ``len``, ``shape``,
``images[index]`` and ``images[a:b]`` (a float batch, normalised, on the device), ``subset`` (a
fold, without a copy) and ``to`` (already there). A batch is gathered by index from the uint8
rows (a memory-mapped store: :mod:`biotune.data.store`), moved to the device as uint8 (4x fewer
bytes than float32; pinned and asynchronous on CUDA) and converted there by
:func:`biotune.data.dataset.to_float`, the same function whole arrays are converted with, so a
batch equals the rows of the old preprocessed tensor on the same device.

Why not a ``torch.utils.data.DataLoader``: a batch here is one fancy-indexed read of a mapped
array and one copy; there is no per-image decoding or augmentation on the host to spread over
worker processes, and the conversion belongs on the device. (timm's loader moves uint8 to the
device and normalises there for the same reason.) Augmentation, when asked, happens on the device
too (:func:`augment`).
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Sequence

import numpy as np
import torch

from ..data.dataset import to_float
from ..data.rows import ImageRows

__all__ = ["DeviceImages", "augment"]


class DeviceImages:
    """uint8 N×H×W×C rows that become normalised float batches N×3×S×S on ``device``.

    Args:
        rows: the images (a numpy array, memory-mapped or not, or :class:`ImageRows` of one).
        image_size: the side S of the batches (resized on the device when the rows differ).
        mean, std: the model's normalisation.
        device: where batches are made.
        channels_last: batches in the NHWC memory format.
        digest: identifies the rows' content (the dataset's fingerprint and which rows), for
            the frozen-prefix cache's files; computed from the rows when not given.
    """

    def __init__(self, rows, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, channels_last: bool = True, digest: str | None = None) -> None:
        self.rows = rows
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._digest = digest

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.image_size, self.image_size)

    @property
    def uint8_bytes(self) -> int:
        """Bytes of the rows as stored (what a whole copy of them would hold)."""
        return int(np.prod(self.rows.shape))

    @property
    def digest(self) -> str:
        """A hash of the images' content and conversion: the prefix cache's file key."""
        if self._digest is None:
            h = hashlib.sha1()
            for start in range(0, len(self), 4096):
                h.update(np.ascontiguousarray(self.rows[start : start + 4096]).tobytes())
            self._digest = h.hexdigest()[:16]
        return f"{self._digest}-{self.image_size}"

    @functools.cached_property
    def key(self) -> tuple:
        """Identifies these images in this process (the prefix cache's memory key); hashed once,
        not at every run that looks the cache up."""
        index = getattr(self.rows, "index", None)
        base = getattr(self.rows, "base", self.rows)
        return ("images", id(base), None if index is None else hashlib.sha1(index.tobytes()).hexdigest(),
                self.image_size, str(self.device))

    def is_contiguous(self, memory_format=torch.contiguous_format) -> bool:
        return memory_format == (torch.channels_last if self.channels_last else torch.contiguous_format)

    def subset(self, index) -> "DeviceImages":
        """Rows ``index`` (e.g. a fold), read when batched: no copy."""
        index = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        digest = None if self._digest is None else \
            f"{self._digest}-{hashlib.sha1(np.asarray(index, dtype=np.int64).tobytes()).hexdigest()[:8]}"
        return DeviceImages(ImageRows(self.rows, index), image_size=self.image_size, mean=self.mean, std=self.std,
                            device=self.device, channels_last=self.channels_last, digest=digest)

    def to(self, device=None, non_blocking: bool = False, **_) -> "DeviceImages":
        """The images' batches are made on their device already; moving is not needed."""
        if device is not None and torch.device(device) != self.device:
            return DeviceImages(self.rows, image_size=self.image_size, mean=self.mean, std=self.std, device=device,
                                channels_last=self.channels_last, digest=self._digest)
        return self

    def uint8(self, key) -> torch.Tensor:
        """The rows ``key`` (a slice, or positions) as a uint8 N×H×W×C tensor on the device."""
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        rows = self.rows[key] if isinstance(key, slice) else self.rows[np.asarray(key, dtype=np.int64)]
        batch = torch.from_numpy(np.array(rows, copy=True, order="C"))  # a read-only map is not a tensor's storage
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def __getitem__(self, key) -> torch.Tensor:
        """The rows ``key`` as a normalised float batch on the device."""
        out = to_float(self.uint8(key), image_size=self.image_size, mean=self._mean, std=self._std)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out.contiguous()


def augment(batch: torch.Tensor, generator: torch.Generator, *, scale=(0.08, 1.0),
            ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Random-resized-crop and horizontal flip of a float batch, on its device (torchvision's
    ``RandomResizedCrop`` parameters: area share ``scale``, aspect ``ratio``; bilinear).

    Each image gets its own crop, drawn from ``generator`` (a CPU generator: the run's seed
    decides the crops whatever the device); the crops are resampled in one ``roi_align`` call.
    """
    from torchvision.ops import roi_align

    n, _, h, w = batch.shape
    area = h * w * torch.empty(n).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    cw = torch.sqrt(area * aspect).clamp(1, w)
    ch = torch.sqrt(area / aspect).clamp(1, h)
    x0 = torch.rand(n, generator=generator) * (w - cw)
    y0 = torch.rand(n, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1).to(batch.device)
    out = roi_align(batch.float(), boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    flip = (torch.rand(n, generator=generator) < 0.5).to(batch.device)
    out = torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out).to(batch.dtype)
    return out.contiguous(memory_format=torch.channels_last) if batch.is_contiguous(memory_format=torch.channels_last) \
        else out
