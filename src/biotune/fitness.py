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

from .executor import Executor, OnEpoch
from .genome import decode
from .session import RunOutcome, RunRequest

__all__ = ["Evaluation", "FitnessEvaluator", "fitness_from_accuracies", "WORST_FITNESS"]

logger = logging.getLogger(__name__)


WORST_FITNESS = 1.0


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
        diverged_seeds: seeds whose run's loss became NaN or infinite; the evaluation then
            counts as failed and gets the worst fitness, 1 (``diverged`` is True).
        failure: why it failed (which seed, where the loss diverged), or None.
    """

    fitness: float
    accuracies: tuple[float, ...]
    seeds: tuple[int, ...]
    fold: int
    seconds: float
    trained: int
    diverged_seeds: tuple[int, ...] = ()
    failure: str | None = None

    @property
    def diverged(self) -> bool:
        return bool(self.diverged_seeds)


class FitnessEvaluator:
    """Evaluates genomes: folds × seeds of fine-tuning runs → Φ, with a memo.

    Runs are performed by an executor (in this process or in parallel); the memo and the
    bookkeeping stay here, in the calling process.

    Args:
        executor: performs the runs (see :mod:`biotune.executor`).
        n_folds: number of folds of the training data.
        seeds: training seeds of one evaluation.
        base_lr: λ⁰.
        context: a string identifying model, weights, data and training settings.
    """

    def __init__(self, executor: Executor, n_folds: int, seeds: Sequence[int], base_lr: float, context: str) -> None:
        self.executor = executor
        self.n_folds = int(n_folds)
        self.seeds = tuple(int(s) for s in seeds)
        self.base_lr = base_lr
        self.context = context
        self._memo: dict[tuple, RunOutcome] = {}

    def _key(self, decoded, fold: int, seed: int) -> tuple:
        return (self.context, decoded.mask, decoded.lrs, int(fold), int(seed))

    def run_keys(self, genome: np.ndarray, fold: int) -> tuple[tuple, ...]:
        """Memo keys of the runs of one evaluation, in seed order."""
        return self._keys(decode(genome, self.base_lr), fold)

    def _keys(self, decoded, fold: int) -> tuple[tuple, ...]:
        return tuple(self._key(decoded, fold, s) for s in self.seeds)

    def remember(self, genome: np.ndarray, fold: int, accuracies: dict[int, float], diverged: Iterable[int] = ()) -> None:
        """Preload results of earlier runs (e.g. from the study on resume)."""
        decoded = decode(genome, self.base_lr)
        diverged = set(diverged)
        for seed, acc in accuracies.items():
            failure = "diverged in an earlier process" if seed in diverged else None
            self._memo[self._key(decoded, fold, seed)] = RunOutcome(float(acc), 0, 0, 0.0, seed in diverged, failure=failure)

    def is_memoised(self, genome: np.ndarray, fold: int) -> bool:
        return all(k in self._memo for k in self.run_keys(genome, fold))

    def evaluate(self, genome: np.ndarray, fold: int, *, on_epoch: OnEpoch | None = None) -> Evaluation:
        """Φ of ``genome`` trained on ``fold``, each seed's run memoised."""
        return self.evaluate_many([(genome, fold)], on_epoch=on_epoch)[0]

    def evaluate_many(
        self,
        items: Sequence[tuple[np.ndarray, int]],
        *,
        on_evaluated: Callable[[int, Evaluation], None] | None = None,
        on_epoch: OnEpoch | None = None,
    ) -> list[Evaluation]:
        """Φ of each ``(genome, fold)``; the runs not in the memo go to the executor together.

        ``on_evaluated(index, evaluation)`` is called as soon as all runs of an item are
        known (items already memoised first), so results can be recorded while others train.
        A run shared by several items is trained once.
        """
        decoded = [decode(genome, self.base_lr) for genome, _ in items]  # once per item
        keys = [self._keys(d, fold) for d, (_, fold) in zip(decoded, items)]
        requests: dict[tuple, RunRequest] = {}
        for d, (_, fold), item_keys in zip(decoded, items, keys):
            for key, seed in zip(item_keys, self.seeds):
                if key not in self._memo and key not in requests:
                    requests[key] = RunRequest(tuple(d.lrs), int(fold), seed)
        order = list(requests)
        fresh: dict[tuple, RunOutcome] = {}
        out: list[Evaluation | None] = [None] * len(items)

        def settle() -> None:
            for j, item_keys in enumerate(keys):
                if out[j] is None and all(k in self._memo for k in item_keys):
                    out[j] = self._assemble(item_keys, int(items[j][1]), fresh)
                    if on_evaluated is not None:
                        on_evaluated(j, out[j])

        def on_result(i: int, outcome: RunOutcome) -> None:
            key = order[i]
            self._memo[key] = fresh[key] = outcome
            settle()

        settle()
        if order:
            self.executor.run([requests[k] for k in order], on_result, on_epoch)
        return out  # type: ignore[return-value]

    def _assemble(self, keys: Sequence[tuple], fold: int, fresh: dict[tuple, RunOutcome]) -> Evaluation:
        outcomes = [self._memo[k] for k in keys]
        accuracies = [o.best_val_accuracy for o in outcomes]
        trained = [fresh.pop(k) for k in keys if k in fresh]  # a shared run counts for its first item
        diverged = [(s, o) for s, o in zip(self.seeds, outcomes) if o.diverged]
        failure = "; ".join(f"seed {s}: {o.failure or 'diverged'}" for s, o in diverged) or None
        return Evaluation(
            # A diverged run fails the evaluation: worst fitness, whatever it reached before.
            fitness=WORST_FITNESS if diverged else fitness_from_accuracies(accuracies),
            accuracies=tuple(accuracies),
            seeds=self.seeds,
            fold=fold,
            seconds=sum(o.seconds for o in trained),
            trained=len(trained),
            diverged_seeds=tuple(s for s, _ in diverged),
            failure=failure,
        )

    def preload(self, records: Iterable[tuple[np.ndarray, int, dict[int, float], Iterable[int]]]) -> int:
        """Remember many ``(genome, fold, {seed: accuracy}, diverged seeds)`` records; returns how many runs."""
        n = 0
        for genome, fold, accs, diverged in records:
            self.remember(genome, fold, accs, diverged)
            n += len(accs)
        return n
