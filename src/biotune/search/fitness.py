"""Fitness Φ(ν) = 1 − mean over seeds of the best validation accuracy, memoised, and the
noise-aware estimate of a configuration: the mean over *all* its evaluations.

Each (configuration, fold, seed) result is memoised under a key that holds everything that
decides it: a context (model, weights, data fingerprint, partition, training settings), the
freeze mask and per-block learning rates, the fold and the seed.

A configuration evaluated again on a fold it has been trained on (an elite re-scored) does
not get its memoised score back: it is trained with the next *replicate* of seeds, so every
re-evaluation adds evidence. :meth:`FitnessEvaluator.estimate` is the mean over every run
of the configuration (all folds, all seeds), which is what selection should compare; one
lucky run cannot keep an elite in place. Two requests for the same runs in one batch are
trained once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..training.executor import Executor, OnEpoch
from ..training.session import Compute, RunOutcome, RunRequest
from .genome import decode
from .pruning import fitness_curve

__all__ = ["Evaluation", "FitnessEvaluator", "fitness_from_accuracies", "replicate_seeds", "WORST_FITNESS"]

logger = logging.getLogger(__name__)


WORST_FITNESS = 1.0


def fitness_from_accuracies(accuracies: Sequence[float]) -> float:
    """Φ = 1 − mean accuracy (lower is better)."""
    return 1.0 - float(np.mean(accuracies))


def replicate_seeds(seeds: Sequence[int], replicate: int) -> tuple[int, ...]:
    """The training seeds of a configuration's ``replicate``-th evaluation on one fold.

    Replicate 0 uses ``seeds``; later ones as many new seeds derived from them.

    Example:
        >>> replicate_seeds((7, 8), 0)
        (7, 8)
        >>> replicate_seeds((7, 8), 1) != (7, 8)
        True
    """
    seeds = tuple(int(s) for s in seeds)
    if replicate == 0:
        return seeds
    state = np.random.SeedSequence([*seeds, int(replicate)]).generate_state(len(seeds))
    return tuple(int(x) % (2**31 - 1) for x in state)


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
        epochs, images: epochs and training images of the runs trained now.
        pruned_seeds: seeds whose run a pruner stopped early; the evaluation is then pruned,
            and its fitness is still 1 − the mean of its runs' best validation accuracy: what
            they reached before they stopped.
        curve: fitness after each epoch, as reported to the pruner
            (:func:`biotune.search.pruning.fitness_curve`); empty when read from the memo.
    """

    fitness: float
    accuracies: tuple[float, ...]
    seeds: tuple[int, ...]
    fold: int
    seconds: float
    trained: int
    diverged_seeds: tuple[int, ...] = ()
    failure: str | None = None
    epochs: int = 0
    images: int = 0
    pruned_seeds: tuple[int, ...] = ()
    curve: tuple[float, ...] = ()
    ram_peak: int = 0
    device_peak: int = 0

    @property
    def diverged(self) -> bool:
        return bool(self.diverged_seeds)

    @property
    def pruned(self) -> bool:
        return bool(self.pruned_seeds) and not self.diverged

    @property
    def compute(self) -> Compute:
        """Training spent on this evaluation (nothing when it came from the memo)."""
        return Compute(self.trained, self.epochs, self.images, self.seconds, self.ram_peak, self.device_peak)


class FitnessEvaluator:
    """Evaluates genomes: folds × seeds of fine-tuning runs → Φ, with a memo.

    Runs are performed by an executor (in this process or in parallel); the memo and the
    bookkeeping stay here, in the calling process.

    Args:
        executor: performs the runs (see :mod:`biotune.training.executor`).
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
        self._evidence: dict[tuple, dict[tuple, RunOutcome]] = {}  # (mask, lrs) -> its runs

    def _key(self, decoded, fold: int, seed: int) -> tuple:
        return (self.context, decoded.mask, decoded.lrs, int(fold), int(seed))

    def _keys(self, decoded, fold: int, seeds: Sequence[int]) -> tuple[tuple, ...]:
        return tuple(self._key(decoded, fold, s) for s in seeds)

    def _store(self, key: tuple, outcome: RunOutcome) -> None:
        self._memo[key] = outcome
        self._evidence.setdefault(key[1:3], {})[key] = outcome

    def seeds_for(self, genome: np.ndarray, fold: int) -> tuple[int, ...]:
        """Seeds of the next evaluation of ``genome`` on ``fold``: the first replicate not yet run."""
        decoded = decode(genome, self.base_lr)
        replicate = 0
        while all(k in self._memo for k in self._keys(decoded, fold, replicate_seeds(self.seeds, replicate))):
            replicate += 1
        return replicate_seeds(self.seeds, replicate)

    def is_memoised(self, genome: np.ndarray, fold: int, seeds: Sequence[int]) -> bool:
        """Whether every run of ``genome`` on ``fold`` with ``seeds`` is known."""
        return all(k in self._memo for k in self._keys(decode(genome, self.base_lr), fold, seeds))

    def remember(self, genome: np.ndarray, fold: int, accuracies: dict[int, float], diverged: Iterable[int] = (),
                 pruned: Iterable[int] = ()) -> None:
        """Record results of earlier runs (e.g. read back from the study on resume)."""
        decoded = decode(genome, self.base_lr)
        diverged, pruned = set(diverged), set(pruned)
        for seed, acc in accuracies.items():
            failure = "diverged in an earlier process" if seed in diverged else None
            self._store(self._key(decoded, fold, seed),
                        RunOutcome(float(acc), 0, 0, 0.0, seed in diverged, failure=failure, pruned=seed in pruned))

    def estimate(self, genome: np.ndarray) -> tuple[float, int]:
        """Noise-aware fitness of a configuration: 1 − mean accuracy over all its runs, and their number.

        A configuration with a diverged run gets the worst fitness; one never run gets
        ``(WORST_FITNESS, 0)``.
        """
        runs = self._evidence.get(decode(genome, self.base_lr).key(), {})
        if not runs:
            return WORST_FITNESS, 0
        if any(o.diverged for o in runs.values()):
            return WORST_FITNESS, len(runs)
        return fitness_from_accuracies([o.best_val_accuracy for o in runs.values()]), len(runs)

    def evaluate(self, genome: np.ndarray, fold: int, *, seeds: Sequence[int] | None = None,
                 on_epoch: OnEpoch | None = None) -> Evaluation:
        """Φ of ``genome`` trained on ``fold`` (with ``seeds``, default the next replicate's)."""
        # Without may_start every item is evaluated: never None.
        return self.evaluate_many([(genome, fold)], seeds=None if seeds is None else [seeds],  # type: ignore[return-value]
                                  on_epoch=on_epoch)[0]

    def evaluate_many(
        self,
        items: Sequence[tuple[np.ndarray, int]],
        *,
        seeds: Sequence[Sequence[int]] | None = None,
        on_evaluated: Callable[[int, Evaluation], None] | None = None,
        on_epoch: OnEpoch | None = None,
        pruning: Sequence[Any] | None = None,
        may_start: Callable[[], bool] | None = None,
    ) -> list[Evaluation | None]:
        """Φ of each ``(genome, fold)``; the runs not in the memo go to the executor together.

        ``seeds`` gives each item's training seeds; by default each item gets the next
        replicate of its configuration on its fold, decided before anything of this call is
        trained (so two equal items share their runs). ``on_evaluated(index, evaluation)``
        is called as soon as all runs of an item are known (items already memoised first), so
        results can be recorded while others train. A run shared by several items is trained
        once. ``pruning`` gives each item's :class:`~biotune.search.pruning.PruneCheck` (or None).
        ``may_start`` is asked before each run starts (a time limit); an item whose runs were not
        all run is ``None`` in the result.
        """
        decoded = [decode(genome, self.base_lr) for genome, _ in items]  # once per item
        if seeds is None:
            seeds = [self.seeds_for(genome, fold) for genome, fold in items]
        seeds = [tuple(int(x) for x in s) for s in seeds]
        keys = [self._keys(d, fold, s) for d, (_, fold), s in zip(decoded, items, seeds)]
        requests: dict[tuple, RunRequest] = {}
        checks = list(pruning) if pruning is not None else [None] * len(items)
        for d, (_, fold), item_keys, check in zip(decoded, items, keys, checks):
            for key in item_keys:
                if key not in self._memo and key not in requests:
                    requests[key] = RunRequest(tuple(d.lrs), int(fold), key[-1], pruning=check)
        order = list(requests)
        fresh: dict[tuple, RunOutcome] = {}
        out: list[Evaluation | None] = [None] * len(items)

        def settle() -> None:
            for j, item_keys in enumerate(keys):
                if out[j] is None and all(k in self._memo for k in item_keys):
                    out[j] = self._assemble(item_keys, seeds[j], int(items[j][1]), fresh)
                    if on_evaluated is not None:
                        on_evaluated(j, out[j])

        def on_result(i: int, outcome: RunOutcome) -> None:
            key = order[i]
            self._store(key, outcome)
            fresh[key] = outcome
            settle()

        settle()
        if order:
            if may_start is None:
                self.executor.run([requests[k] for k in order], on_result, on_epoch)
            else:
                self.executor.run([requests[k] for k in order], on_result, on_epoch, may_start=may_start)
        return out

    def _assemble(self, keys: Sequence[tuple], seeds: Sequence[int], fold: int,
                  fresh: dict[tuple, RunOutcome]) -> Evaluation:
        outcomes = [self._memo[k] for k in keys]
        accuracies = [o.best_val_accuracy for o in outcomes]
        trained = [fresh.pop(k) for k in keys if k in fresh]  # a shared run counts for its first item
        diverged = [(s, o) for s, o in zip(seeds, outcomes) if o.diverged]
        pruned = tuple(s for s, o in zip(seeds, outcomes) if o.pruned)
        failure = "; ".join(f"seed {s}: {o.failure or 'diverged'}" for s, o in diverged) or None
        return Evaluation(
            # A diverged run fails the evaluation: worst fitness, whatever it reached before.
            fitness=WORST_FITNESS if diverged else fitness_from_accuracies(accuracies),
            accuracies=tuple(accuracies),
            seeds=tuple(seeds),
            fold=fold,
            seconds=sum(o.seconds for o in trained),
            trained=len(trained),
            diverged_seeds=tuple(s for s, _ in diverged),
            failure=failure,
            epochs=sum(o.epochs_run for o in trained),
            images=sum(o.train_images for o in trained),
            pruned_seeds=pruned,
            curve=fitness_curve([o.val_accuracies for o in outcomes], [o.pruned for o in outcomes]),
            ram_peak=max((o.ram_peak for o in trained), default=0),
            device_peak=max((o.device_peak for o in trained), default=0),
        )
