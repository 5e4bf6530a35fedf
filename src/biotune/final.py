"""The final fine-tune: the chosen configuration on the full training set, scored on test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .executor import Executor
from .genome import decode
from .models import Block, trainable_percent
from .session import RunOutcome, RunRequest

__all__ = ["FinalRun", "FinalResult", "final_finetune", "mean_and_se"]


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
    """

    seed: int
    val_accuracy: float
    test_accuracy: float
    best_epoch: int
    epochs_run: int
    seconds: float
    diverged: bool
    failure: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FinalResult:
    """Test accuracy of a configuration over several runs.

    Attributes:
        genes: the configuration.
        runs: each run.
        test_accuracy_mean, test_accuracy_se: mean and standard error over runs.
        trainable_percent: share of the model's parameters in trainable blocks, in %.
    """

    genes: tuple[float, ...]
    runs: tuple[FinalRun, ...]
    test_accuracy_mean: float
    test_accuracy_se: float
    val_accuracy_mean: float
    trainable_percent: float


def final_finetune(
    executor: Executor,
    genes: Sequence[float],
    blocks: Sequence[Block],
    *,
    base_lr: float,
    seeds: Sequence[int],
    done: Mapping[int, FinalRun] | None = None,
    on_run: Callable[[FinalRun], None] | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FinalResult:
    """Fine-tune ``genes`` on all training data once per seed; test at the best validation epoch.

    Args:
        executor: performs the runs (in parallel when it can).
        blocks: the model's partition (for the trainable share).
        done: runs already finished (by seed), e.g. from an interrupted run; not repeated.
        on_run: called after each new run (to persist it).
    """
    decoded = decode(np.asarray(genes), base_lr)
    done = dict(done or {})
    todo = [s for s in seeds if s not in done]

    def finished(i: int, outcome: RunOutcome) -> None:
        run = FinalRun(
            todo[i], outcome.best_val_accuracy, float(outcome.test_accuracy or 0.0), outcome.best_epoch,
            outcome.epochs_run, outcome.seconds, outcome.diverged, outcome.failure,
        )
        done[run.seed] = run
        if on_run is not None:
            on_run(run)

    executor.run([RunRequest(tuple(decoded.lrs), None, s) for s in todo], finished, on_epoch)
    runs = [done[s] for s in seeds]
    mean, se = mean_and_se([r.test_accuracy for r in runs])
    return FinalResult(
        genes=tuple(float(g) for g in genes),
        runs=tuple(runs),
        test_accuracy_mean=mean,
        test_accuracy_se=se,
        val_accuracy_mean=float(np.mean([r.val_accuracy for r in runs])),
        trainable_percent=trainable_percent(blocks, decoded.mask),
    )
