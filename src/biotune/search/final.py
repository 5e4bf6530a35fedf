"""The final phase: the top-k configurations fine-tuned on the full training set, one chosen.

Each candidate configuration is fine-tuned once per final seed and scored on validation and
on test at its best validation epoch. The candidate with the best mean *validation* accuracy
is the result (ties: the better-ranked candidate); test accuracy is reported, never used to
choose.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import BioTuneError
from ..models.blocks import Block, trainable_percent
from ..training.executor import Executor
from ..training.session import Compute, RunOutcome, RunRequest
from .genome import decode

__all__ = ["FinalRun", "FinalResult", "Selection", "select_final", "best_weights", "weights_name", "mean_and_se",
           "final_run", "final_result"]


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    return float(arr.mean()), se


@dataclass(frozen=True)
class FinalRun:
    """One final run: best validation accuracy, and test accuracy at that epoch.

    A run whose loss became NaN/inf stops there (``diverged``, ``failure`` says where); its
    accuracies are those of its best epoch before, or 0 when it diverged in the first.
    ``val_loss`` is the validation cross-entropy at the best epoch (it breaks ties);
    ``val_accuracies`` the validation curve, epoch by epoch.
    """

    seed: int
    val_accuracy: float
    test_accuracy: float
    best_epoch: int
    epochs_run: int
    seconds: float
    diverged: bool
    failure: str | None = None
    train_images: int = 0
    val_loss: float = math.inf
    val_accuracies: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {**self.__dict__, "val_accuracies": list(self.val_accuracies)}


@dataclass(frozen=True)
class FinalResult:
    """Test accuracy of a configuration over several runs.

    Attributes:
        genes: the configuration.
        runs: each run.
        test_accuracy_mean, test_accuracy_se: mean and standard error over runs.
        trainable_percent: share of the model's parameters in trainable blocks, in %.
        label: what the candidate is, when not only a search result (a race's ``FT``).
        dropped_at: the epoch at which a race dropped it (its runs stop there); None: it finished.
    """

    genes: tuple[float, ...]
    runs: tuple[FinalRun, ...]
    test_accuracy_mean: float
    test_accuracy_se: float
    val_accuracy_mean: float
    trainable_percent: float
    label: str = ""
    dropped_at: int | None = None

    @property
    def compute(self) -> Compute:
        return Compute.of(self.runs)

    @property
    def best_run(self) -> FinalRun:
        """The run with the best validation accuracy (ties: the first seed): the model kept."""
        return max(self.runs, key=lambda r: r.val_accuracy)


RACED = "validation race"  # Selection.selected_by of a race (biotune.search.race)


@dataclass(frozen=True)
class Selection:
    """The final phase's outcome: every candidate's result and the one chosen on validation.

    Attributes:
        candidates: one :class:`FinalResult` per candidate, in ranking order.
        chosen: index of the candidate with the best mean validation accuracy.
        selected_by: how: ``"validation"`` (top-k x seeds) or ``"validation race"``.
    """

    candidates: tuple[FinalResult, ...]
    chosen: int
    selected_by: str = "validation"

    @property
    def result(self) -> FinalResult:
        return self.candidates[self.chosen]

    @property
    def raced(self) -> bool:
        """Whether the final phase was a race (``--final race``)."""
        return self.selected_by == RACED

    @property
    def compute(self) -> Compute:
        total = Compute()
        for c in self.candidates:
            total = total + c.compute
        return total


def final_run(seed: int, outcome: RunOutcome, seconds: float | None = None) -> FinalRun:
    """A final run's record from its outcome (``seconds``: the run's wall time when it ran in parts)."""
    return FinalRun(
        seed, outcome.best_val_accuracy, float(outcome.test_accuracy or 0.0), outcome.best_epoch,
        outcome.epochs_run, outcome.seconds if seconds is None else seconds, outcome.diverged, outcome.failure,
        outcome.train_images, outcome.best_val_loss, tuple(outcome.val_accuracies),
    )


def final_result(genes, blocks, mask, runs: Sequence[FinalRun], **extra) -> FinalResult:
    """A candidate's result over its final runs (``extra``: its label, where a race dropped it)."""
    mean, se = mean_and_se([r.test_accuracy for r in runs])
    return FinalResult(
        genes=tuple(float(g) for g in genes),
        runs=tuple(runs),
        test_accuracy_mean=mean,
        test_accuracy_se=se,
        val_accuracy_mean=float(np.mean([r.val_accuracy for r in runs])),
        trainable_percent=trainable_percent(blocks, mask),
        **extra,
    )


def weights_name(genes: Sequence[float], seed: int) -> str:
    """File name of a final run's best weights: a hash of the configuration and the seed."""
    digest = hashlib.sha1(json.dumps([float(g) for g in genes]).encode()).hexdigest()[:12]
    return f"{digest}-seed{int(seed)}.safetensors"


def select_final(
    executor: Executor,
    candidates: Sequence[Sequence[float]],
    blocks: Sequence[Block],
    *,
    base_lr: float,
    seeds: Sequence[int],
    done: Mapping[tuple, FinalRun] | None = None,
    weights_dir: str | Path | None = None,
    on_run: Callable[[tuple[float, ...], FinalRun], None] | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> Selection:
    """Fine-tune each candidate once per seed on all training data; choose on validation.

    All runs go to the executor together (in parallel when it can).

    Args:
        candidates: genomes in ranking order (best estimated fitness first).
        done: runs already finished, keyed by ``(genes tuple, seed)``; not repeated.
        weights_dir: where each run writes its best-epoch weights (:func:`weights_name`);
            of each candidate only its best run's file is kept (:attr:`FinalResult.best_run`),
            so at most one file per candidate is on disk. ``None`` keeps no weights.
        on_run: called as ``on_run(genes, run)`` after each new run (to persist it).

    Returns:
        Every candidate's result and the index of the one with the best mean validation
        accuracy (equals: the lower mean validation loss, then the first).
    """
    if not candidates:
        raise BioTuneError("the final phase needs at least one candidate configuration")
    genes_list = [tuple(float(g) for g in c) for c in candidates]
    decoded = [decode(np.asarray(g), base_lr) for g in genes_list]
    runs = dict(done or {})
    todo = [(g, s) for g in genes_list for s in seeds if (g, s) not in runs]
    lrs = {g: tuple(d.lrs) for g, d in zip(genes_list, decoded)}
    folder = None if weights_dir is None else Path(weights_dir)

    def finished(i: int, outcome: RunOutcome) -> None:
        genes, seed = todo[i]
        runs[(genes, seed)] = run = final_run(seed, outcome)
        if folder is not None:  # keep the best finished run's weights of this candidate only
            mine = [s for s in seeds if (genes, s) in runs]
            best = max(mine, key=lambda s: (runs[(genes, s)].val_accuracy, -list(seeds).index(s)))
            for s in mine:
                if s != best:
                    (folder / weights_name(genes, s)).unlink(missing_ok=True)
        if on_run is not None:
            on_run(genes, run)

    def request(genes, seed) -> RunRequest:
        save_to = None if folder is None else str(folder / weights_name(genes, seed))
        return RunRequest(lrs[genes], None, seed, save_to)

    executor.run([request(g, s) for g, s in todo], finished, on_epoch)
    results = tuple(final_result(g, blocks, d.mask, [runs[(g, s)] for s in seeds]) for g, d in zip(genes_list, decoded))
    chosen = max(range(len(results)), key=lambda i: (results[i].val_accuracy_mean, -_mean_loss(results[i]), -i))
    return Selection(results, chosen)


def _mean_loss(result: FinalResult) -> float:
    return float(np.mean([r.val_loss for r in result.runs]))


def best_weights(
    executor: Executor,
    selection: Selection,
    *,
    base_lr: float,
    weights_dir: str | Path,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> Path:
    """The weights file of the chosen candidate's best run (by validation accuracy).

    Normally written by that run itself; when it is missing (a run directory of an older
    version, or a file removed by hand) the run is repeated with its seed to write it.
    """
    result = selection.result
    run = result.best_run
    path = Path(weights_dir) / weights_name(result.genes, run.seed)
    if not path.is_file():
        lrs = tuple(decode(np.asarray(result.genes), base_lr).lrs)
        executor.run([RunRequest(lrs, None, run.seed, str(path))], lambda i, o: None, on_epoch)
    return path
