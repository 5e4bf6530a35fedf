"""One fine-tuning run: per-block parameter groups, frozen blocks in eval mode, early stopping.

:class:`FineTuner` holds one model and its pretrained weights; each :meth:`FineTuner.run`
restores those weights, seeds a fresh head, trains the blocks whose learning rate is positive
(Adam, one parameter group per block, cosine schedule over the epoch budget, cross-entropy,
no augmentation unless ``TrainConfig.augment``) and returns a :class:`TrainResult`. Images come
as :class:`~biotune.training.images.DeviceImages` (uint8 until batched) or as float tensors.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..config import RuntimeConfig, TrainConfig
from ..errors import BioTuneError
from ..models.blocks import Block
from ..models.build import reset_head
from .groups import param_groups, set_trainable
from .images import DeviceImages, augment
from .metrics import Scored, evaluate, evaluate_accuracy
from .prefix import PrefixCache, bypass
from .regime import Regime, rescale_by_rgn

__all__ = ["TrainResult", "FineTuner", "TrainerOptions", "eval_batch_size"]

logger = logging.getLogger(__name__)

class _Rows:
    """Rows ``index`` of a tensor, gathered batch by batch (``rows[idx]`` is ``base[index[idx]]``).

    Why: a fold of the frozen-prefix cache gathered at once is a copy of the fold's share of the
    entry (half the entry with 2 folds) beside the entry itself, which the cache keeps; gathered
    per batch, the run holds one batch more. The rows, and so the training, are the same.
    """

    def __init__(self, base: torch.Tensor, index: torch.Tensor) -> None:
        self.base, self.index = base, index.to(base.device)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx) -> torch.Tensor:
        return self.base[self.index[idx]]

    def to(self, device, non_blocking: bool = False) -> "_Rows":
        if torch.device(device) != self.base.device:
            return _Rows(self.base.to(device, non_blocking=non_blocking), self.index)
        return self


def _rows(x, index: torch.Tensor, device: torch.device):
    """Rows ``index`` of the training images: a lazy subset of uint8 images or of a tensor already on
    ``device`` (cached prefix features), else a gather of the tensor (e.g. features mapped from disk,
    moved to the device afterwards: the fold only)."""
    if isinstance(x, DeviceImages):
        return x.subset(index)
    if x.device == device:
        return _Rows(x, index)
    return x[index.to(x.device)]


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text


@dataclass(frozen=True)
class TrainResult:
    """What one run produced.

    Attributes:
        seed: the run's seed (head initialisation, batch order, dropout).
        best_val_accuracy: best validation accuracy over the epochs run (the run's score).
        best_epoch: epoch (1-based) of that accuracy.
        epochs_run: epochs trained before early stopping or the budget ended.
        val_accuracies, train_losses: per-epoch history.
        seconds: wall time.
        diverged: the loss became NaN or infinite; training stopped there.
        failure: why the run failed (e.g. where the loss became NaN), or None.
        batch_size: the training batch size used (lower than configured after an
            out-of-memory retry with ``auto_batch_size``).
        lr_multipliers: AutoRGN's per-tensor multipliers of each epoch (empty otherwise).
        best_state: weights at the best epoch, kept only when asked for.
        prefix_depth: leading blocks read from the frozen-prefix cache (0: none).
        train_images: training images processed, summed over epochs (compute accounting).
        pruned: ``should_stop`` stopped the run before its budget (a search pruner).
        best_val_loss: validation cross-entropy at the best epoch (it breaks ties of accuracy).
        best_predicted: each validation image's predicted class at the best epoch, kept with
            ``best_state`` (a race compares runs image by image).
        checkpoint: everything needed to go on, when the run paused at ``stop_at`` (else None).
    """

    seed: int
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    val_accuracies: tuple[float, ...]
    train_losses: tuple[float, ...]
    seconds: float
    diverged: bool = False
    best_state: dict | None = field(default=None, repr=False, compare=False)
    prefix_depth: int = 0
    failure: str | None = None
    batch_size: int = 0
    lr_multipliers: tuple[dict[str, float], ...] = field(default=(), repr=False)
    train_images: int = 0
    pruned: bool = False
    best_val_loss: float = math.inf
    best_predicted: torch.Tensor | None = field(default=None, repr=False, compare=False)
    checkpoint: dict | None = field(default=None, repr=False, compare=False)

    @property
    def paused(self) -> bool:
        """The run stopped at ``stop_at`` and can go on from :attr:`checkpoint`."""
        return self.checkpoint is not None


def eval_batch_size(batch_size: int) -> int:
    """Images per evaluation forward pass: twice the training batch.

    An inference pass keeps no activations for a backward pass (only the current layers' input and
    output), so two training batches of images stay below a training step's peak, whatever the
    image size; a fixed 512 did not (at 224 px one such batch alone took 6.8 GB for
    EfficientNet-Lite0). Measured on a whole FT run at 224 px, batch 64, the run's peak is the
    training step's either way (``benchmarks/memory.py``). Validation and test results do not depend
    on it (eval mode scores each image on its own) beyond float summation order.
    """
    return max(1, 2 * int(batch_size))


@dataclass(frozen=True)
class _RunArgs:
    """What :meth:`FineTuner.run` was asked (see its arguments)."""

    lrs: Sequence[float]
    mask: Sequence[bool]
    train: tuple
    val: tuple
    seed: int
    keep_best: bool
    on_epoch: Callable[[int, float, float], None] | None
    train_index: torch.Tensor | None
    regime: Regime
    should_stop: Callable[[int, float], bool] | None
    stop_at: int | None = None
    resume: dict | None = None


@dataclass
class _RunState:
    """A run's record as it trains: the best epoch so far, early stopping, the curves, what went wrong."""

    best: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    best_predicted: torch.Tensor | None = None
    stale: int = 0
    diverged: bool = False
    failure: str | None = None
    pruned: bool = False
    checkpoint: dict | None = None
    images: int = 0
    val_hist: list[float] = field(default_factory=list)
    loss_hist: list[float] = field(default_factory=list)
    multipliers: list[dict[str, float]] = field(default_factory=list)
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)

    _SAVED = ("best", "best_loss", "best_epoch", "best_state", "best_predicted", "stale", "images", "val_hist",
              "loss_hist", "multipliers")

    def after_epoch(self, epoch: int, val: Scored, loss: float, run: _RunArgs, model: nn.Module, settled: int,
                    patience: int, epochs: int) -> bool:
        """Record an epoch's validation score and mean training loss; ``True`` when the run stops here
        (patience run out once the trainable blocks are settled, or pruned). An epoch is better when
        its accuracy is higher, or equal with a lower validation loss."""
        acc = val.accuracy
        self.val_hist.append(acc)
        self.loss_hist.append(loss)
        if run.on_epoch is not None:
            run.on_epoch(epoch, acc, loss)
        if acc > self.best or (acc == self.best and val.loss < self.best_loss):
            self.best, self.best_loss, self.best_epoch, self.stale = acc, val.loss, epoch, 0
            if run.keep_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                self.best_predicted = val.predicted.cpu()
        elif epoch >= settled:
            self.stale += 1
            if self.stale >= patience:
                return True
        if run.should_stop is not None and epoch < epochs and run.should_stop(epoch, self.best):
            self.pruned = True
            return True
        return False

    def result(self, seed: int, seconds: float, cut, batch_size: int) -> TrainResult:
        return TrainResult(
            seed=seed,
            best_val_accuracy=max(self.best, 0.0),
            best_epoch=self.best_epoch,
            epochs_run=len(self.val_hist),
            val_accuracies=tuple(self.val_hist),
            train_losses=tuple(self.loss_hist),
            seconds=seconds,
            diverged=self.diverged,
            best_state=self.best_state,
            prefix_depth=0 if cut is None else cut.depth,
            failure=self.failure,
            batch_size=batch_size,
            lr_multipliers=tuple(self.multipliers),
            train_images=self.images,
            pruned=self.pruned,
            best_val_loss=self.best_loss,
            best_predicted=self.best_predicted,
            checkpoint=self.checkpoint,
        )

    def saved(self) -> dict:
        """The record as a checkpoint holds it (plain values and tensors)."""
        return {name: getattr(self, name) for name in self._SAVED}

    def load(self, saved: dict) -> None:
        for name in self._SAVED:
            setattr(self, name, saved[name])


@dataclass(frozen=True)
class TrainerOptions:
    """How a :class:`FineTuner` runs, never what it computes; passed whole, so that a trainer rebuilt
    for another model (LoRA) keeps every option.

    Attributes:
        channels_last: use the NHWC memory format for the model.
        amp: bf16 autocast (CUDA only; ignored elsewhere).
        compile: run the model through ``torch.compile``.
        cache_memory: byte budget of the exact frozen-prefix cache (0: off); see
            :mod:`biotune.training.prefix`.
        cache_dir: where prefixes too large for ``cache_memory`` go (memory-mapped files).
        cache_namespace: names this model's weights and preprocessing in those files.
        auto_batch_size: on out-of-memory, halve the batch size and retry the run (the
            smaller size then sticks); without it, a clear error names the batch size.
        grad_checkpointing: timm's gradient checkpointing of the model's blocks (less activation
            memory, more compute; see :class:`~biotune.config.RuntimeConfig`).
        eval_batch_size: images per evaluation pass (default :func:`eval_batch_size` of the batch).
    """

    channels_last: bool = True
    amp: bool = False
    compile: bool = False
    cache_memory: int = 0
    cache_dir: str | None = None
    cache_namespace: str = "prefix"
    auto_batch_size: bool = False
    grad_checkpointing: bool = False
    eval_batch_size: int | None = None

    @classmethod
    def of(cls, runtime: RuntimeConfig, device: torch.device, *, namespace: str) -> "TrainerOptions":
        """The options a run's :class:`RuntimeConfig` sets; ``namespace`` names the model and settings
        in the prefix cache (memory format and autocast are added to it)."""
        layout = "nhwc" if runtime.channels_last else "nchw"
        bf16 = "-bf16" if runtime.amp and device.type == "cuda" else ""
        return cls(channels_last=runtime.channels_last, amp=runtime.amp, compile=runtime.compile,
                   cache_memory=runtime.cache_bytes, cache_dir=runtime.cache_dir,
                   cache_namespace=f"{namespace}-{layout}{bf16}", auto_batch_size=runtime.auto_batch_size,
                   grad_checkpointing=runtime.grad_checkpointing, eval_batch_size=runtime.eval_batch_size)


class FineTuner:
    """Fine-tunes one pretrained model again and again from the same starting weights.

    Args:
        model: the model, head already sized for the task; its current weights are the
            starting point of every run.
        blocks: the model's partition (see :func:`biotune.models.blocks.partition_model`).
        config: epochs, patience, batch size, BatchNorm treatment.
        device: where to train; data given to :meth:`run` must be there already.
        options: how it runs (:class:`TrainerOptions`; default: channels-last, no autocast, no
            prefix cache).

    Example:
        >>> import timm, torch
        >>> from biotune.models import partition_model
        >>> m = timm.create_model("resnet18", num_classes=2)
        >>> ft = FineTuner(m, partition_model(m), TrainConfig(epochs=1), torch.device("cpu"))
        >>> x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1] * 4)
        >>> r = ft.run([0, 0, 0, 0, 0, 1e-3], (x, y), (x, y), seed=0)
        >>> 0.0 <= r.best_val_accuracy <= 1.0
        True
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[Block],
        config: TrainConfig,
        device: torch.device,
        options: TrainerOptions | None = None,
    ) -> None:
        options = options or TrainerOptions()
        self.options = options
        self.model = model.to(device)
        if options.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.blocks = tuple(blocks)
        self.config = config
        self.device = device
        self.amp = bool(options.amp) and device.type == "cuda"
        self.auto_batch_size = options.auto_batch_size
        self.batch_size = config.batch_size
        self.eval_batch_size = options.eval_batch_size or eval_batch_size(config.batch_size)
        if options.grad_checkpointing:
            if not hasattr(self.model, "set_grad_checkpointing"):
                raise BioTuneError(f"{type(self.model).__name__} has no gradient checkpointing (timm's "
                                   "set_grad_checkpointing); run without --grad-checkpointing")
            self.model.set_grad_checkpointing(True)
        self._forward = torch.compile(self.model) if options.compile else self.model
        self.cache = PrefixCache(
            self.model, self.blocks, memory=options.cache_memory, autocast=self._autocast, directory=options.cache_dir,
            namespace=options.cache_namespace,
        )
        self._initial = copy.deepcopy(self.model.state_dict())
        modules = dict(self.model.named_modules())
        self._block_modules = [[modules[p] for p in b.prefixes if p in modules] for b in self.blocks]
        self._params = dict(self.model.named_parameters())

    @property
    def initial_state(self) -> dict[str, torch.Tensor]:
        """The pretrained weights every run starts from (do not modify)."""
        return self._initial

    def _configure(self, mask: Sequence[bool]) -> None:
        """Set requires_grad and train/eval mode per block."""
        set_trainable(self.model, self.blocks, mask, train_bn=self.config.train_bn,
                      modules=self._block_modules, params=self._params)

    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def restore(self, seed: int) -> None:
        """Reset to the pretrained weights with a head initialised from ``seed``."""
        self.model.load_state_dict(self._initial)
        reset_head(self.model, torch.Generator(device="cpu").manual_seed(seed))

    def run(
        self,
        lrs: Sequence[float],
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        seed: int,
        *,
        keep_best: bool = False,
        on_epoch: Callable[[int, float, float], None] | None = None,
        train_index: torch.Tensor | None = None,
        regime: Regime | None = None,
        should_stop: Callable[[int, float], bool] | None = None,
        stop_at: int | None = None,
        resume: dict | None = None,
    ) -> TrainResult:
        """Fine-tune with per-block learning rates ``lrs`` (0 freezes a block).

        When leading blocks are frozen, training and validation start from the cached
        output of that prefix (exact; see :mod:`biotune.training.prefix`).

        Args:
            lrs: one learning rate per block.
            train, val: ``(images, labels)``: :class:`~biotune.training.images.DeviceImages` or
                preprocessed tensors, labels on the training device.
            seed: seeds the head, the batch order and dropout; same seed, same result.
            train_index: train on these rows of ``train`` only (e.g. a fold). Pass the whole
                training set with an index, rather than a slice, so its prefix cache is shared.
            keep_best: keep the weights of the best epoch in the result (``best_state``).
            on_epoch: called as ``on_epoch(epoch, val_accuracy, train_loss)``.
            regime: a loss penalty and/or per-epoch trainable blocks (baselines).
            should_stop: asked ``should_stop(epoch, best_accuracy_so_far)`` after each epoch but
                the last; ``True`` ends the run there (``pruned``): a search's pruner.
            stop_at: pause after this epoch (unless the run ends sooner) and return a
                ``checkpoint`` to go on from: a race's rung.
            resume: a checkpoint of this run (same arguments) to go on from, as if never paused.

        Raises:
            BioTuneError: every learning rate is 0 or the wrong number is given.
        """
        if len(lrs) != len(self.blocks):
            raise BioTuneError(f"got {len(lrs)} learning rates for {len(self.blocks)} blocks")
        mask = [lr > 0 for lr in lrs]
        if not any(mask):
            raise BioTuneError("every block is frozen: at least one learning rate must be positive")
        while True:
            try:
                return self._run(_RunArgs(lrs, mask, train, val, seed, keep_best, on_epoch, train_index,
                                          regime or Regime(), should_stop, stop_at, resume))
            except (RuntimeError, MemoryError) as err:
                if not _is_out_of_memory(err):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if not self.auto_batch_size or self.batch_size == 1:
                    raise BioTuneError(
                        f"out of memory on {self.device} with batch size {self.batch_size}: lower --batch-size, "
                        "or pass --auto-batch-size to halve it and retry automatically"
                    ) from None
                self.batch_size //= 2
                self.eval_batch_size = max(1, self.eval_batch_size // 2)
                logger.warning("out of memory on %s: retrying the run with batch size %d", self.device, self.batch_size)

    def _masks(self, mask: Sequence[bool], regime: Regime) -> tuple[list[list[bool]], int, list[bool]]:
        """The trainable blocks of each epoch, the epoch from which they no longer change, and the blocks
        trainable at some epoch."""
        masks = [list(mask)] if regime.masks is None else [[m and t for m, t in zip(e, mask)] for e in regime.masks]
        if any(len(m) != len(self.blocks) for m in masks):
            raise BioTuneError(f"a regime mask does not have one entry per block ({len(self.blocks)})")
        return masks, len(masks), [any(m[b] for m in masks) for b in range(len(self.blocks))]

    def _inputs(self, run: _RunArgs, ever: list[bool]):
        """Training and validation inputs of a run: the frozen prefix's cached output when it is exact
        (no initial state, no augmentation), the fold's rows, on the device; and the prefix cut."""
        (x_train, y_train), (x_val, _) = run.train, run.val
        exact = run.regime.init_state is None and not self.config.augment  # other crops every epoch otherwise
        cut = self.cache.cut_for(ever, x_val) if exact else None  # frozen in every epoch
        if run.regime.init_state is not None:
            self.model.load_state_dict(run.regime.init_state)
        if cut is not None:
            # filled in batches of the evaluation's size: the prefix's pass is at most an evaluation pass,
            # which the memory plan bounds (a fixed 256 images was not in the plan)
            cached = (self.cache.features(cut, x_train, self.eval_batch_size),
                      self.cache.features(cut, x_val, self.eval_batch_size))
            if cached[0] is None or cached[1] is None:
                cut = None
            else:
                x_train, x_val = cached
        if run.train_index is not None:
            x_train, y_train = _rows(x_train, run.train_index, self.device), y_train[run.train_index]
        # Features cached on disk are memory-mapped CPU tensors: on a GPU the fold is read once per run
        # and moved; on the CPU its rows are read batch by batch (from the page cache after the first epoch).
        x_train, x_val = x_train.to(self.device, non_blocking=True), x_val.to(self.device, non_blocking=True)
        return x_train, y_train, x_val, cut

    def _optimizer(self, lrs: Sequence[float], regime: Regime, epochs: int, n_train: int):
        """Adam over the blocks' groups (one group per tensor for AutoRGN), cosine to 0 over the budget."""
        groups = param_groups(self.model, self.blocks, lrs)
        if regime.rgn_batches:  # AutoRGN: one group per tensor
            names = {id(p): n for n, p in self.model.named_parameters()}
            groups = [{"name": names[id(p)], "lr": g["lr"], "params": [p]} for g in groups for p in g["params"]]
        optimizer = torch.optim.Adam(groups)
        steps_per_epoch = max(1, math.ceil(n_train / self.batch_size))
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)

    def _epoch(self, state: _RunState, x_train, y_train, order, optimizer, scheduler, crops, regime: Regime,
               epoch: int) -> tuple[float, int]:
        """One pass over ``order`` in mini-batches: the summed loss and the images seen (a non-finite
        objective stops it and marks the run diverged)."""
        total, count, batch_size = 0.0, 0, self.batch_size
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = x_train[idx] if crops is None else augment(x_train[idx], crops)
            with self._autocast():
                loss = state.loss_fn(self._forward(xb), y_train[idx])
                objective = loss if regime.penalty is None else loss + regime.penalty(self.model)
            if not torch.isfinite(objective):
                state.diverged = True
                state.failure = f"training loss became {objective.item()} at epoch {epoch}, step {i // batch_size + 1}"
                break
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            count += len(idx)
        return total, count

    def _run(self, run: _RunArgs) -> TrainResult:
        cfg, regime = self.config, run.regime
        masks, settled, ever = self._masks(run.mask, regime)
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            # fork_rng scopes the global RNG (used by dropout) to this run and restores it after.
            stack.enter_context(torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []))
            torch.manual_seed(run.seed)
            self.restore(run.seed)  # the prefix cache is computed from these pristine weights
            x_train, y_train, x_val, cut = self._inputs(run, ever)
            epochs = regime.epochs or cfg.epochs
            stack.enter_context(bypass(self.model, cut))
            self._configure(masks[0])
            optimizer, scheduler = self._optimizer(run.lrs, regime, epochs, len(x_train))
            shuffle = torch.Generator(device="cpu").manual_seed(run.seed)
            crops = torch.Generator(device="cpu").manual_seed(run.seed + 1) if cfg.augment else None
            state = _RunState()
            first = 1 if run.resume is None else self._resume(run.resume, state, optimizer, scheduler, shuffle, crops)
            for epoch in range(first, epochs + 1):
                self._configure(masks[min(epoch, len(masks)) - 1])
                order = torch.randperm(len(x_train), generator=shuffle).to(self.device)
                if regime.rgn_batches:
                    bs = self.batch_size
                    batches = [order[i : i + bs] for i in range(0, len(order), bs)][: regime.rgn_batches]
                    state.multipliers.append(
                        rescale_by_rgn(optimizer, self._rgn_loss(x_train, y_train, state.loss_fn, regime), batches))
                total, count = self._epoch(state, x_train, y_train, order, optimizer, scheduler, crops, regime, epoch)
                state.images += count
                if state.diverged:
                    logger.debug("run seed=%d diverged at epoch %d", run.seed, epoch)
                    break
                with self._autocast():
                    val = evaluate(self.model, x_val, run.val[1], self.eval_batch_size, forward=self._forward,
                                   metric=cfg.metric)
                if state.after_epoch(epoch, val, total / max(1, count), run, self.model, settled, cfg.patience, epochs):
                    break
                if run.stop_at is not None and run.stop_at <= epoch < epochs:
                    state.checkpoint = self._checkpoint(epoch, state, optimizer, scheduler, shuffle, crops)
                    break
        return state.result(run.seed, time.perf_counter() - start, cut, self.batch_size)

    def _checkpoint(self, epoch: int, state: _RunState, optimizer, scheduler, shuffle, crops) -> dict:
        """Everything :meth:`_resume` needs to go on after ``epoch`` exactly as if never paused."""
        cuda = self.device.type == "cuda"
        return {
            "epoch": epoch, "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(), "shuffle": shuffle.get_state(),
            "crops": None if crops is None else crops.get_state(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None, "state": state.saved(),
        }

    def _resume(self, saved: dict, state: _RunState, optimizer, scheduler, shuffle, crops) -> int:
        """Load a :meth:`_checkpoint`; the epoch to go on from."""
        self.model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        shuffle.set_state(saved["shuffle"])  # generator states: CPU byte tensors (load checkpoints to the CPU)
        if crops is not None:
            crops.set_state(saved["crops"])
        torch.set_rng_state(saved["rng"])
        if saved["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        state.load(saved["state"])
        return int(saved["epoch"]) + 1

    def _rgn_loss(self, x, y, loss_fn, regime: Regime):
        """The objective of one mini-batch of rows ``idx``, as AutoRGN measures its gradients."""
        def loss(idx):
            with self._autocast():
                value = loss_fn(self._forward(x[idx]), y[idx])
                return value if regime.penalty is None else value + regime.penalty(self.model)
        return loss

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, state: dict | None = None) -> float:
        """Accuracy (the configuration's metric) on ``(x, y)``, after loading ``state`` when given."""
        if state is not None:
            self.model.load_state_dict(state)
        with self._autocast():
            return evaluate_accuracy(self.model, x, y, self.eval_batch_size, forward=self._forward,
                                     metric=self.config.metric)
