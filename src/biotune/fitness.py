"""Fitness Φ(ν) = 1 − mean over seeds of the best validation accuracy, memoised.

Each (configuration, fold, seed) result is memoised under a key that holds everything that
decides it: a context (model, weights, data fingerprint, partition, training settings), the
freeze mask and per-block learning rates, the fold and the seed. A resumed run preloads the
memo from its study, so finished evaluations are never repeated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .data import SplitData
from .genome import decode
from .trainer import FineTuner, TrainResult

__all__ = ["Evaluation", "FitnessEvaluator", "fitness_from_accuracies"]

logger = logging.getLogger(__name__)


def fitness_from_accuracies(accuracies: Sequence[float]) -> float:
    """Φ = 1 − mean accuracy (lower is better)."""
    return 1.0 - float(np.mean(accuracies))


@dataclass(frozen=True)
class Evaluation:
    """Fitness of one genome on one fold.

    Attributes:
        fitness: Φ, in [0, 1], lower is better.
        accuracies: best validation accuracy of each seed's run, in ``seeds`` order.
        seeds: the training seeds.
        fold: the fold trained on.
        seconds: training wall time spent now (0 when every seed came from the memo).
        trained: how many seed runs were trained now rather than read from the memo.
        diverged: some run's loss became NaN or infinite.
    """

    fitness: float
    accuracies: tuple[float, ...]
    seeds: tuple[int, ...]
    fold: int
    seconds: float
    trained: int
    diverged: bool = False


class FitnessEvaluator:
    """Evaluates genomes: folds × seeds of fine-tuning runs → Φ, with a memo.

    Args:
        finetuner: runs the fine-tuning.
        data: splits and folds (numpy).
        tensors: preprocessed ``x_train``/``x_val`` tensors on the training device, the
            same order as ``data``.
        seeds: training seeds of one evaluation.
        base_lr: λ⁰.
        context: a string identifying model, weights, data and training settings.
    """

    def __init__(
        self,
        finetuner: FineTuner,
        data: SplitData,
        tensors: dict[str, torch.Tensor],
        seeds: Sequence[int],
        base_lr: float,
        context: str,
    ) -> None:
        self.finetuner = finetuner
        self.data = data
        device = finetuner.device
        self._x_train = tensors["x_train"]
        self._y_train = torch.as_tensor(data.y_train, device=device)
        self._val = (tensors["x_val"], torch.as_tensor(data.y_val, device=device))
        self._folds = [torch.as_tensor(f, device=device) for f in data.folds]
        self.seeds = tuple(int(s) for s in seeds)
        self.base_lr = base_lr
        self.context = context
        self._memo: dict[tuple, float] = {}

    def _key(self, decoded, fold: int, seed: int) -> tuple:
        return (self.context, decoded.mask, decoded.lrs, int(fold), int(seed))

    def key(self, genome: np.ndarray, fold: int, seed: int) -> tuple:
        """Memo key of one run."""
        return self._key(decode(genome, self.base_lr), fold, seed)

    def remember(self, genome: np.ndarray, fold: int, accuracies: dict[int, float]) -> None:
        """Preload results of earlier runs (e.g. from the study on resume)."""
        decoded = decode(genome, self.base_lr)
        for seed, acc in accuracies.items():
            self._memo[self._key(decoded, fold, seed)] = float(acc)

    def is_memoised(self, genome: np.ndarray, fold: int) -> bool:
        decoded = decode(genome, self.base_lr)
        return all(self._key(decoded, fold, s) in self._memo for s in self.seeds)

    def evaluate(
        self,
        genome: np.ndarray,
        fold: int,
        *,
        on_run: Callable[[TrainResult], None] | None = None,
        on_epoch: Callable[[int, float, float], None] | None = None,
    ) -> Evaluation:
        """Φ of ``genome`` trained on ``fold``, each seed's run memoised."""
        decoded = decode(genome, self.base_lr)
        idx = self._folds[fold]
        train = (self._x_train[idx], self._y_train[idx])
        accuracies, seconds, trained, diverged = [], 0.0, 0, False
        for seed in self.seeds:
            key = self._key(decoded, fold, seed)
            if key not in self._memo:
                result = self.finetuner.run(decoded.lrs, train, self._val, seed, on_epoch=on_epoch)
                self._memo[key] = result.best_val_accuracy
                seconds += result.seconds
                trained += 1
                diverged |= result.diverged
                if on_run is not None:
                    on_run(result)
            accuracies.append(self._memo[key])
        return Evaluation(
            fitness=fitness_from_accuracies(accuracies),
            accuracies=tuple(accuracies),
            seeds=self.seeds,
            fold=int(fold),
            seconds=seconds,
            trained=trained,
            diverged=diverged,
        )

    def preload(self, records: Iterable[tuple[np.ndarray, int, dict[int, float]]]) -> int:
        """Remember many ``(genome, fold, {seed: accuracy})`` records; returns how many runs."""
        n = 0
        for genome, fold, accs in records:
            self.remember(genome, fold, accs)
            n += len(accs)
        return n
