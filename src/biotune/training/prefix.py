"""Exact frozen-prefix cache: the output of frozen leading blocks, computed once and reused.

When blocks 0..k−1 of a configuration are frozen they run in eval mode on un-augmented
images, so their output is a fixed function of each image. :class:`PrefixCache` computes it
once per depth k for the training and validation images, and a fine-tuning run then trains
and validates only the suffix on it: the prefix modules are bypassed (their ``forward``
returns its input) so the model's own ``forward`` carries on from the cached tensor.

A cut at depth k is used only when it is exact. Where it would sit is read from one traced
forward pass (the order in which modules run); it is then *checked* once: the bypassed model
on the cached tensor must give the same output as the whole model on the images, both in
eval mode and in the training configuration (root in train mode, frozen blocks in eval
mode, the same RNG state, so a skipped dropout would show). Models whose forward does
something between blocks outside any module (e.g. a ViT adding its position embedding)
fail that check at that depth and train uncached there.

Why hand-written: timm's ``forward_intermediates`` returns stage outputs but cannot resume a
forward from one, and ``torch.fx`` tracing bakes ``self.training`` branches into the graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..models.blocks import Block, within

__all__ = ["Cut", "PrefixCache", "bypass"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Cut:
    """Where a forward pass can start from cached features.

    Attributes:
        depth: number of leading blocks replaced by the cache.
        bypassed: top-most module names whose ``forward`` is skipped.
        entry: the module whose input is the cached tensor.
    """

    depth: int
    bypassed: tuple[str, ...]
    entry: str


def _passthrough(x, *args, **kwargs):
    return x


@contextlib.contextmanager
def bypass(model: nn.Module, cut: Cut | None) -> Iterator[None]:
    """Within the block, the modules of ``cut.bypassed`` return their input unchanged.

    Parameters stay registered (``state_dict`` is complete); only ``forward`` is shadowed
    by an instance attribute and restored afterwards.
    """
    if cut is None or not cut.bypassed:
        yield
        return
    # The whole subtree, not only the top-most modules: timm's gradient checkpointing runs a stage's
    # blocks one by one (``checkpoint_seq(..., flatten=True)``), never the stage's own forward, so a
    # cut traced without checkpointing must still hold with it (and the other way round).
    modules = dict(model.named_modules())
    shadowed = list({id(m): m for name in cut.bypassed for m in modules[name].modules()}.values())
    for module in shadowed:
        module.forward = _passthrough
    try:
        yield
    finally:
        for module in shadowed:
            del module.forward


class _Stop(Exception):
    pass


class PrefixCache:
    """Cached outputs of frozen leading blocks, bounded in memory, shared by every run.

    Args:
        model: the model (its current weights are the pretrained ones the cache is valid for).
        blocks: its partition, in forward order.
        memory: byte budget of the cached tensors; least recently used depths are evicted.
            0 disables the cache.
        autocast: a context manager factory applied around forward passes (mixed precision).
        directory: where a depth too large for ``memory`` is written instead (memory-mapped
            ``.npy`` files, shared by processes and resumed runs); ``None``: such a depth
            trains uncached.
        namespace: identifies the model's weights and preprocessing in file names, so a
            directory can hold the caches of several runs.

    Example:
        >>> import timm, torch
        >>> from biotune.models import partition_model
        >>> m = timm.create_model("resnet18", num_classes=2).eval()
        >>> cache = PrefixCache(m, partition_model(m), memory=2**30)
        >>> x = torch.randn(4, 3, 32, 32)
        >>> cut = cache.cut_for([False, False, True, True, True, True], x)
        >>> cut.depth
        2
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[Block],
        *,
        memory: int,
        autocast=contextlib.nullcontext,
        directory: str | Path | None = None,
        namespace: str = "prefix",
    ) -> None:
        self.model = model
        self.blocks = tuple(blocks)
        self.memory = int(memory)
        self.directory = None if directory is None else Path(directory)
        self.namespace = namespace
        self._autocast = autocast
        self._disk: dict[tuple, torch.Tensor] = {}
        self._fingerprints: dict[tuple, str] = {}
        self._order: list[str] | None = None
        self._cuts: dict[int, Cut | None] = {}
        self._store: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.memory > 0

    @property
    def bytes_used(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._store.values())

    def _trace_order(self, sample: torch.Tensor) -> list[str]:
        order: list[str] = []
        handles = [
            m.register_forward_pre_hook(lambda mod, args, name=name: order.append(name))
            for name, m in self.model.named_modules()
            if name
        ]
        try:
            with torch.no_grad(), _eval(self.model), self._autocast():
                self.model(sample[:2])
        finally:
            for h in handles:
                h.remove()
        return order

    def _locate(self, depth: int, order: list[str]) -> Cut | None:
        """Where block ``depth`` starts in the traced order, and what runs before it."""
        starts = [i for i, name in enumerate(order) if any(within(name, p) for p in self.blocks[depth].prefixes)]
        if not starts:
            return None
        p = starts[0]
        entry = order[p]
        before = [n for n in order[:p] if not within(entry, n)]  # drop containers still open
        after = set(order[p:])
        if any(within(a, b) for b in before for a in after):
            return None  # a module of the prefix runs again later
        frozen = [p_ for b in self.blocks[:depth] for p_ in b.prefixes]
        if any(not any(within(n, p_) or within(p_, n) for n in before) for p_ in frozen):
            return None  # a frozen block does not run before block `depth`
        later = [p_ for b in self.blocks[depth:] for p_ in b.prefixes]
        if any(within(n, p_) for n in before for p_ in later):
            return None  # part of a later block runs before block `depth`
        top = [n for n in dict.fromkeys(before) if not any(within(n, o) and n != o for o in before)]
        return Cut(depth, tuple(top), entry)

    def _capture(self, cut: Cut, x: torch.Tensor) -> torch.Tensor:
        """Input of ``cut.entry`` when the model runs on ``x`` (the rest is not run)."""
        captured: list[torch.Tensor] = []

        def hook(module, args):
            captured.append(args[0])
            raise _Stop

        handle = dict(self.model.named_modules())[cut.entry].register_forward_pre_hook(hook)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]

    def _check(self, cut: Cut, sample: torch.Tensor) -> bool:
        """The bypassed model on the captured tensor reproduces the whole model, in both modes."""
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        frozen = [m for name, m in self.model.named_modules() if any(within(name, p) for b in self.blocks[: cut.depth] for p in b.prefixes)]
        try:
            with torch.no_grad(), self._autocast():
                with _eval(self.model):
                    features = self._capture(cut, sample)
                    if not isinstance(features, torch.Tensor):
                        return False
                    full = self.model(sample)
                    with bypass(self.model, cut):
                        part = self.model(features)
                    if full.shape != part.shape or not torch.allclose(full.float(), part.float(), rtol=1e-4, atol=1e-5):
                        return False
                    self.model.train()
                    for m in frozen:
                        m.eval()
                    devices = [sample.device] if sample.device.type == "cuda" else []
                    with torch.random.fork_rng(devices=devices):
                        torch.manual_seed(0)
                        full = self.model(sample)
                    with torch.random.fork_rng(devices=devices), bypass(self.model, cut):
                        torch.manual_seed(0)
                        part = self.model(features)
                    return full.shape == part.shape and torch.allclose(full.float(), part.float(), rtol=1e-4, atol=1e-5)
        except Exception as err:  # a cut that breaks the forward is simply not usable
            logger.debug("prefix cut at depth %d unusable: %s", cut.depth, err)
            return False
        finally:
            self.model.load_state_dict(state)

    def cut_at(self, depth: int, sample: torch.Tensor) -> Cut | None:
        """The checked cut before block ``depth`` (None: not exact there)."""
        if depth not in self._cuts:
            if self._order is None:
                self._order = self._trace_order(sample)
            cut = self._locate(depth, self._order)
            if cut is not None and not self._check(cut, sample[:4]):
                cut = None
            self._cuts[depth] = cut
            logger.debug("prefix depth %d: %s", depth, "usable" if cut else "not exact, trained uncached")
        return self._cuts[depth]

    def cut_for(self, mask: Sequence[bool], sample: torch.Tensor) -> Cut | None:
        """The deepest usable cut for a freeze mask: at most its leading frozen blocks."""
        if not self.enabled:
            return None
        leading = next((i for i, m in enumerate(mask) if m), len(mask))
        for depth in range(min(leading, len(self.blocks) - 1), 0, -1):
            cut = self.cut_at(depth, sample)
            if cut is not None:
                return cut
        return None

    def output(self, cut: Cut, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The prefix's output for ``x``, computed now and not kept (e.g. to time a step)."""
        return self._compute(cut, x, batch_size)

    def features(self, cut: Cut, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor | None:
        """The cached input of ``cut.entry`` for the images ``x``; None when over the budget.

        One tensor is kept per (depth, images): the images are identified by their storage,
        so pass the same tensor (e.g. the whole training set, indexed afterwards) each time.
        """
        key = (cut.depth, *_identity(x))
        if key in self._store:
            self._store.move_to_end(key)
            self.hits += 1
            return self._store[key]
        if key in self._disk:
            self.hits += 1
            return self._disk[key]
        if not self.enabled:
            return None
        with torch.no_grad(), _eval(self.model), self._autocast():
            first = self._capture(cut, x[:1])
            need = first.numel() * first.element_size() * len(x)
            if need > self.memory:
                if self.directory is None:
                    logger.debug("prefix depth %d: %.1f MB exceeds the cache budget", cut.depth, need / 2**20)
                    return None
                self._disk[key] = self._on_disk(cut, x, batch_size)
                return self._disk[key]
            while self._store and self.bytes_used + need > self.memory:
                self._store.popitem(last=False)
            out = self._compute(cut, x, batch_size)
        self._store[key] = out
        self.misses += 1
        return out

    def _compute(self, cut: Cut, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        # Filled batch by batch into one tensor: concatenating a list of the batches' outputs holds
        # both at once at the moment of the concatenation.
        out = None
        for i in range(0, len(x), batch_size):
            part = self._capture(cut, x[i : i + batch_size])
            if out is None:
                layout = (torch.channels_last if part.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                          else torch.contiguous_format)
                out = torch.empty((len(x), *part.shape[1:]), dtype=part.dtype, device=part.device,
                                  memory_format=layout)
            out[i : i + len(part)] = part
        return out

    def _on_disk(self, cut: Cut, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """A memory-mapped CPU tensor of the features, written once (atomically) and reused."""
        fp_key = _identity(x)
        if fp_key not in self._fingerprints:
            digest = getattr(x, "digest", None)  # images kept uint8 know theirs (see training.images)
            self._fingerprints[fp_key] = digest or hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        path = self.directory / f"{self.namespace}-depth{cut.depth}-{self._fingerprints[fp_key]}.npy"
        if path.is_file():
            self.hits += 1
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            array = None
            for i in range(0, len(x), batch_size):
                part = _to_numpy(self._capture(cut, x[i : i + batch_size]))
                if array is None:
                    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=part.dtype, shape=(len(x), *part.shape[1:]))
                array[i : i + len(part)] = part
            array.flush()
            del array
            os.replace(tmp, path)
            self.misses += 1
        return _from_numpy(np.load(path, mmap_mode="c"))

    def clear(self) -> None:
        """Forget the in-memory tensors (files on disk stay for later runs)."""
        self._store.clear()
        self._disk.clear()


def _identity(x) -> tuple:
    """Which images ``x`` are, in this process: a tensor by its storage, uint8 images by their key."""
    key = getattr(x, "key", None)
    return key if key is not None else (x.data_ptr(), tuple(x.shape), str(x.device))


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """Features as a numpy array: NHWC for 4-D tensors, bf16 kept bit-exact as int16."""
    t = t.detach()
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.cpu().contiguous().numpy()


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(a)
    if t.dtype == torch.int16:  # features are floating point: int16 holds bf16 bits
        t = t.view(torch.bfloat16)
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, the previous modes restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
