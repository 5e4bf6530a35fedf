"""A model and a dataset made ready for training, and the one call that trains on them.

:class:`Session` is built once per process (the main one, and each worker of a parallel
executor, from the same :class:`SessionSpec`, so every process trains on identical data and
weights). :meth:`Session.perform` answers a :class:`RunRequest`: one fine-tuning run of a
configuration on a fold (search) or on the whole training set scored on test (final).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .._files import atomic_write_bytes, slug
from ..config import (
    DEMO_DATASET,
    NATIVE,
    SMALL_IMAGE_SIZE,
    DataConfig,
    ModelConfig,
    RuntimeConfig,
    TrainConfig,
    resolve_image_size,
)
from ..data.catalog import default_data_dir
from ..data.dataset import ImageDataset, SplitData, load_dataset, split_dataset
from ..data.store import report_lines
from ..errors import BioTuneError
from ..models.blocks import Block, partition_model
from ..models.build import PretrainedModel, build_model, default_input_size, save_state_dict_file
from .images import DeviceImages
from .peak import device_peak, ram_peak, reset_peaks
from .regime import Regime
from .trainer import FineTuner, TrainerOptions

__all__ = ["SessionSpec", "Session", "DeviceSplits", "RunRequest", "RunOutcome", "Compute", "training_seeds", "SEARCH_SEEDS", "FINAL_SEEDS"]

SEARCH_SEEDS, FINAL_SEEDS = 0, 1

logger = logging.getLogger(__name__)


def training_seeds(seed: int, purpose: int, count: int) -> tuple[int, ...]:
    """Distinct training seeds derived from the run seed (purpose 0: search, 1: final)."""
    state = np.random.SeedSequence([seed, purpose]).generate_state(count)
    return tuple(int(s) % (2**31 - 1) for s in state)


def store_dir(runtime: RuntimeConfig) -> Path:
    """Where datasets are kept as uint8 memory-mapped files: ``<cache_dir>/store``, else ``store``
    beside the named datasets (``<data_dir>/store``)."""
    if runtime.cache_dir is not None:
        return Path(runtime.cache_dir).expanduser() / "store"
    return default_data_dir(runtime.data_dir) / "store"


def warn_small_images(size: int, dataset: str) -> None:
    """Warn when a real dataset runs below 64 px: the accuracy it costs is large."""
    if size < SMALL_IMAGE_SIZE and dataset != DEMO_DATASET:
        logger.warning(
            "%s runs at %d px, below %d px: ImageNet features degrade sharply at small sizes (a linear probe on "
            "frozen EfficientNet-Lite0 features of CIFAR-10 scores 13%% at 32 px, 48%% at 64 px, 72%% at 224 px); "
            "leave --image-size unset for the model's pretrained size unless speed matters more",
            dataset, size, SMALL_IMAGE_SIZE)


def _native_size(ds: ImageDataset) -> int:
    """The side a dataset is stored at (``--image-size native``); inputs are square."""
    height, width = ds.x_train.shape[1:3]
    if height != width:
        raise BioTuneError(f"--image-size native: dataset {ds.name!r} is stored at {height}x{width}, not square; "
                           "give a size in pixels")
    return int(height)


@dataclass(frozen=True)
class SessionSpec:
    """Everything needed to build a :class:`Session` (picklable: sent to worker processes)."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    n_folds: int
    seed: int
    runtime: RuntimeConfig


@dataclass(frozen=True)
class RunRequest:
    """One fine-tuning run to perform.

    Attributes:
        lrs: per-block learning rates (0 freezes a block).
        fold: the training fold; ``None`` trains on the whole training set and also scores
            the best epoch's weights on the test split (a final run).
        seed: the training seed.
        save_to: for a final run, a ``.safetensors`` path where the weights of its best
            validation epoch are written (atomically) when it finishes; ``None`` keeps none.
        pruning: for a search run, anything whose ``start()`` gives a fresh
            ``should_stop(epoch, best_accuracy_so_far)`` (:class:`biotune.search.pruning.PruneCheck`);
            ``None`` trains the whole budget.
        stop_at: pause after this epoch (a race's rung): the run's state is written to
            ``checkpoint`` and the outcome is ``paused``.
        checkpoint: where a paused run's state is written.
        resume_from: a checkpoint of this run to go on from (a paused run); ``None`` starts it.
    """

    lrs: tuple[float, ...]
    fold: int | None
    seed: int
    save_to: str | None = None
    pruning: Any = None
    stop_at: int | None = None
    checkpoint: str | None = None
    resume_from: str | None = None


@dataclass(frozen=True)
class RunOutcome:
    """What a :class:`RunRequest` produced (small and picklable)."""

    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    seconds: float
    diverged: bool
    prefix_depth: int = 0
    test_accuracy: float | None = None
    failure: str | None = None
    train_images: int = 0
    val_accuracies: tuple[float, ...] = ()
    pruned: bool = False
    ram_peak: int = 0
    device_peak: int = 0
    paused: bool = False
    best_val_loss: float = float("inf")
    val_predicted: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Compute:
    """Training compute a method consumed: runs, epochs, training images, wall seconds, and the
    largest peak of resident and device memory one of its runs reached (bytes, measured in the
    process that trained it: :mod:`biotune.training.peak`; 0 when not measured).

    Sums with ``+`` (peaks: the larger); ``Compute.of(outcomes)`` counts finished runs.

    Example:
        >>> (Compute(1, 4, 400, 2.0) + Compute(2, 6, 600, 3.0)).runs
        3
    """

    runs: int = 0
    epochs: int = 0
    images: int = 0
    seconds: float = 0.0
    ram_peak: int = 0
    device_peak: int = 0

    def __add__(self, other: "Compute") -> "Compute":
        return Compute(self.runs + other.runs, self.epochs + other.epochs, self.images + other.images,
                       self.seconds + other.seconds, max(self.ram_peak, other.ram_peak),
                       max(self.device_peak, other.device_peak))

    @classmethod
    def of(cls, outcomes) -> "Compute":
        """The compute of runs (anything with ``epochs_run``, ``train_images``, ``seconds``)."""
        total = cls()
        for o in outcomes:
            total = total + cls(1, int(o.epochs_run), int(o.train_images), float(o.seconds),
                                int(getattr(o, "ram_peak", 0)), int(getattr(o, "device_peak", 0)))
        return total

    def to_dict(self) -> dict:
        out = {"training_runs": self.runs, "epochs": self.epochs, "train_images": self.images,
               "train_seconds": round(self.seconds, 3)}
        if self.ram_peak:
            out["ram_peak_bytes"] = self.ram_peak
        if self.device_peak:
            out["device_peak_bytes"] = self.device_peak
        return out


@dataclass(frozen=True)
class DeviceSplits:
    """A session's data on its device: per split, uint8 images batched and converted on demand
    (:class:`DeviceImages`, rows of the memory-mapped store) and labels; the search's folds as index
    tensors into train. The one place that turns a :class:`SplitData` into what a run trains on."""

    x_train: DeviceImages
    y_train: torch.Tensor
    x_val: DeviceImages
    y_val: torch.Tensor
    x_test: DeviceImages
    y_test: torch.Tensor
    folds: tuple[torch.Tensor, ...]

    @property
    def train(self) -> tuple[DeviceImages, torch.Tensor]:
        return self.x_train, self.y_train

    @property
    def val(self) -> tuple[DeviceImages, torch.Tensor]:
        return self.x_val, self.y_val

    @property
    def test(self) -> tuple[DeviceImages, torch.Tensor]:
        return self.x_test, self.y_test

    @property
    def largest_fold(self) -> int:
        """Images of the largest fold (the training set when there is one fold)."""
        return max((len(f) for f in self.folds), default=len(self.y_train))

    @classmethod
    def of(cls, split: SplitData, *, size: int, mean, std, device: torch.device, channels_last: bool,
           fingerprint: str) -> "DeviceSplits":
        parts: dict[str, Any] = {}
        for name, rows, labels in (("train", split.x_train, split.y_train), ("val", split.x_val, split.y_val),
                                   ("test", split.x_test, split.y_test)):
            # uint8 rows of the store (mapped, shared by every process), float only batch by batch on the device.
            index = getattr(rows, "index", None)
            which = "all" if index is None else hashlib.sha1(index.tobytes()).hexdigest()[:12]
            parts[f"x_{name}"] = DeviceImages(rows, image_size=size, mean=mean, std=std, device=device,
                                              channels_last=channels_last, digest=f"{fingerprint}-{name}-{which}")
            y = torch.as_tensor(labels)
            parts[f"y_{name}"] = (y.pin_memory() if device.type == "cuda" else y).to(device, non_blocking=True)
        return cls(**parts, folds=tuple(torch.as_tensor(f, device=device) for f in split.folds))


@dataclass
class Session:
    """A model and a dataset made ready for training (built once, used by search and final)."""

    pretrained: PretrainedModel
    blocks: tuple[Block, ...]
    data: SplitData
    dataset_name: str
    image_size: int
    splits: DeviceSplits
    finetuner: FineTuner
    settings_key: str  # a hash of everything that decides a run's result: part of every memo and cache key
    classes: tuple[str, ...] = ()
    read_size: int = 0  # side image files were read at (short side, centre crop) before the resize
    reading: tuple[str, ...] = ()  # how the source was read (data.store.report_lines), for --dry-run

    @property
    def device(self) -> torch.device:
        """Where this session trains."""
        return self.finetuner.device

    def reconfigure(self, runtime: RuntimeConfig) -> None:
        """Train from now on with ``runtime``'s memory settings (what a memory limit chose: evaluation
        batch, gradient checkpointing, prefix cache); the
        model is still the pretrained one, so the new trainer starts from the same weights."""
        old = self.finetuner
        options = dataclasses.replace(old.options, grad_checkpointing=runtime.grad_checkpointing,
                                      eval_batch_size=runtime.eval_batch_size, cache_memory=runtime.cache_bytes)
        old.model.load_state_dict(old.initial_state)
        self.finetuner = FineTuner(old.model, old.blocks, old.config, old.device, options)

    @classmethod
    def from_spec(cls, spec: SessionSpec) -> "Session":
        return cls.prepare(spec.model, spec.data, spec.train, n_folds=spec.n_folds, seed=spec.seed, runtime=spec.runtime)

    @classmethod
    def prepare(
        cls,
        model: ModelConfig,
        data: DataConfig,
        train: TrainConfig,
        *,
        n_folds: int,
        seed: int,
        runtime: RuntimeConfig,
    ) -> "Session":
        """Load the dataset (mapped from its uint8 store), build and partition the model, split."""
        device = runtime.resolve_device()
        if runtime.threads is not None:  # this process's share of the cores (workers set theirs too)
            torch.set_num_threads(runtime.threads)
        # The model's input size must be known before an ImageFolder is read.
        default_size = default_input_size(model.name)
        native = data.image_size == NATIVE
        read_size = default_size if native else resolve_image_size(data.image_size, data.dataset, default_size)[0]
        # The store keeps images at the smaller of their size and the training size; native keeps an
        # .npz's own size (a named dataset's conversion size is the model's, as before).
        keep = 2048 if native and data.dataset.endswith(".npz") else read_size
        ds = load_dataset(data.dataset, image_size=keep, data_dir=runtime.data_dir, store_dir=store_dir(runtime),
                          progress=runtime.progress, options=data.read_options())
        pm = build_model(model.name, ds.num_classes, weights=model.weights, seed=seed)
        blocks = partition_model(pm.model, model.granularity, partition=model.partition)
        split = split_dataset(ds, val_fraction=data.val_fraction, n_folds=n_folds, seed=seed)
        size, _ = resolve_image_size(data.image_size, data.dataset, pm.input_size,
                                     _native_size(ds) if native else None)
        warn_small_images(size, data.dataset)
        splits = DeviceSplits.of(split, size=size, mean=pm.mean, std=pm.std, device=device,
                                 channels_last=runtime.channels_last, fingerprint=ds.fingerprint())
        settings_key = hashlib.sha1(json.dumps(
            {
                "model": pm.name,
                "weights": pm.weights,
                "data": ds.fingerprint(),
                "image_size": size,
                "blocks": [b.name for b in blocks],
                "train": train.to_dict(),
                "val_fraction": data.val_fraction,
                "seed": seed,
                "n_folds": n_folds,
            },
            sort_keys=True,
        ).encode()).hexdigest()[:16]
        options = TrainerOptions.of(runtime, device, namespace=f"{slug(pm.name)}-{settings_key}")
        finetuner = FineTuner(pm.model, blocks, train, device, options)
        return cls(pm, blocks, split, ds.name, size, splits, finetuner, settings_key, ds.classes, read_size,
                   tuple(report_lines(ds)))

    def perform(
        self,
        request: RunRequest,
        on_epoch: Callable[[int, float, float], None] | None = None,
        *,
        finetuner: FineTuner | None = None,
        regime: Regime | None = None,
    ) -> RunOutcome:
        """Train one run; a final run (``fold=None``) is also scored on test at its best epoch.

        ``finetuner`` replaces the session's (e.g. a LoRA-wrapped model on the same data) and
        ``regime`` adds a baseline's penalty or schedule.
        """
        t = self.splits
        tuner = finetuner or self.finetuner
        final = request.fold is None
        if request.stop_at is not None and request.checkpoint is None:
            raise BioTuneError("a run asked to pause (stop_at) needs a checkpoint file to pause to")
        reset_peaks(tuner.device)
        resume = None
        if request.resume_from is not None:
            # On the CPU: load_state_dict places model and optimiser tensors on their parameters'
            # device, and generator states and saved predictions must stay CPU tensors.
            resume = torch.load(request.resume_from, map_location="cpu", weights_only=True)
        result = tuner.run(
            request.lrs, t.train, t.val, request.seed,
            keep_best=final, on_epoch=on_epoch, train_index=None if final else t.folds[request.fold], regime=regime,
            should_stop=None if request.pruning is None else request.pruning.start(),
            stop_at=request.stop_at, resume=resume,
        )
        if result.paused:
            buffer = io.BytesIO()
            torch.save(result.checkpoint, buffer)
            atomic_write_bytes(request.checkpoint, buffer.getvalue())
        test = None
        if final:
            test = tuner.evaluate(*t.test, state=result.best_state) if result.best_state else 0.0
            if request.save_to is not None and not result.paused:
                save_state_dict_file(request.save_to, result.best_state or tuner.model.state_dict())
        return RunOutcome(
            best_val_accuracy=result.best_val_accuracy,
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            seconds=result.seconds,
            diverged=result.diverged,
            prefix_depth=result.prefix_depth,
            test_accuracy=test,
            failure=result.failure,
            train_images=result.train_images,
            val_accuracies=result.val_accuracies,
            pruned=result.pruned,
            ram_peak=ram_peak(),
            device_peak=device_peak(tuner.device),
            paused=result.paused,
            best_val_loss=result.best_val_loss,
            val_predicted=None if result.best_predicted is None else result.best_predicted.numpy().astype(np.int32),
        )
