"""The search loop: the memetic engine asks, the fitness evaluator answers, the study records.

The engine is deterministic for its seed, so a resumed run replays it from the start: each
asked evaluation already in the study is read back instead of trained, and the run carries
on from the first one that is not. The result equals an uninterrupted run's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .errors import BioTuneError
from .evolution import Candidate, GenerationStats, MemeticEvolution
from .fitness import Evaluation, FitnessEvaluator
from .study import TrialStore

__all__ = ["EvaluationRecord", "SearchResult", "SearchListener", "run_search"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationRecord:
    """One asked evaluation and how it was answered.

    Attributes:
        candidate: what the engine asked.
        fold: the fold it was evaluated on.
        evaluation: its fitness and per-seed accuracies.
        source: ``trained`` (now), ``study`` (read back from an earlier process) or
            ``memo`` (the same configuration was already evaluated on this fold).
        trial_number: the Optuna trial holding it (None for ``memo``).
    """

    candidate: Candidate
    fold: int
    evaluation: Evaluation
    source: str
    trial_number: int | None


@dataclass(frozen=True)
class SearchResult:
    """Outcome of a search.

    Attributes:
        best_genes: the best genome of the final population (by validation fitness).
        best_fitness: its fitness, on the last generation's fold.
        history: every evaluation in order.
        generations: population statistics after each generation (0 = initial).
        seconds: wall time of this process's part of the search.
    """

    best_genes: tuple[float, ...]
    best_fitness: float
    history: tuple[EvaluationRecord, ...]
    generations: tuple[GenerationStats, ...]
    seconds: float

    @property
    def initial_mean_fitness(self) -> float:
        return self.generations[0].mean


class SearchListener:
    """Hooks for progress display (search and final runs); every method is a no-op by default."""

    def on_generation_start(self, generation: int, fold: int, candidates: list[Candidate]) -> None:
        pass

    def on_evaluation_start(self, candidate: Candidate) -> None:
        pass

    def on_epoch(self, epoch: int, val_accuracy: float, train_loss: float) -> None:
        pass

    def on_evaluation(self, record: EvaluationRecord) -> None:
        pass

    def on_generation_end(self, stats: GenerationStats) -> None:
        pass

    def on_final_start(self, n_runs: int) -> None:
        pass

    def on_final_run(self, run) -> None:
        pass


def run_search(
    engine: MemeticEvolution,
    evaluator: FitnessEvaluator,
    store: TrialStore,
    *,
    listener: SearchListener | None = None,
) -> SearchResult:
    """Drive ``engine`` to its last generation, evaluating each batch and recording it.

    Generation g trains on fold ``g mod n_folds``. Evaluations already in ``store`` are
    read back (resume); configurations already evaluated on the fold come from the memo.
    """
    listener = listener or SearchListener()
    n_folds = evaluator.n_folds
    stored = store.completed()
    evaluator.preload(
        (np.asarray(item.genes), item.evaluation.fold, dict(zip(item.evaluation.seeds, item.evaluation.accuracies)),
         item.evaluation.diverged_seeds)
        for item in stored.values()
    )
    if stored:
        logger.info("resuming: %d finished evaluations found in the study", len(stored))
    start = time.perf_counter()
    history: list[EvaluationRecord] = []
    while not engine.done:
        batch = engine.ask()
        g = batch[0].generation
        fold = g % n_folds
        listener.on_generation_start(g, fold, batch)
        records = _answer_batch(batch, fold, evaluator, store, stored, listener)
        history.extend(records)
        for record in records:
            logger.debug(
                "gen %d slot %d %s fold %d: fitness %.4f (%s)",
                g, record.candidate.slot, record.candidate.role, fold, record.evaluation.fitness, record.source,
            )
        stats = engine.tell([r.evaluation.fitness for r in records])
        listener.on_generation_end(stats)
    best_genes, best_fitness = engine.best
    return SearchResult(
        best_genes=tuple(float(x) for x in best_genes),
        best_fitness=best_fitness,
        history=tuple(history),
        generations=tuple(engine.history),
        seconds=time.perf_counter() - start,
    )


def _answer_batch(batch, fold, evaluator, store, stored, listener) -> list[EvaluationRecord]:
    """Records of one generation, in slot order: read back, memoised, or trained together.

    Each configuration is trained once per batch and recorded as one trial; a duplicate in
    the same batch is answered from the memo afterwards, like one seen in an earlier batch.
    """
    records: list[EvaluationRecord | None] = [None] * len(batch)
    to_train: list[int] = []
    claimed: set[tuple] = set()
    for i, cand in enumerate(batch):
        previous = stored.get((cand.generation, cand.slot))
        if previous is not None:
            if not np.array_equal(np.asarray(previous.genes), cand.array) or previous.evaluation.fold != fold:
                raise BioTuneError(
                    f"the study's trial {previous.trial_number} (generation {cand.generation}, slot {cand.slot}) "
                    "does not match this search's genome; was it written by another version or settings?"
                )
            records[i] = EvaluationRecord(cand, fold, previous.evaluation, "study", previous.trial_number)
            listener.on_evaluation(records[i])
            continue
        keys = evaluator.run_keys(cand.array, fold)
        if evaluator.is_memoised(cand.array, fold) or claimed.issuperset(keys):
            continue  # answered from the memo below
        claimed.update(keys)
        to_train.append(i)
    trials = {}
    for i in to_train:
        listener.on_evaluation_start(batch[i])
        trials[i] = store.start(batch[i], fold)

    def finished(j: int, evaluation: Evaluation) -> None:
        i = to_train[j]
        number = store.finish(trials.pop(i), evaluation)
        records[i] = EvaluationRecord(batch[i], fold, evaluation, "trained", number)
        listener.on_evaluation(records[i])

    try:
        evaluator.evaluate_many([(batch[i].array, fold) for i in to_train], on_evaluated=finished, on_epoch=listener.on_epoch)
    except BaseException as err:
        # A failed evaluation must not stay RUNNING; Ctrl-C leaves it to the resume logic.
        if not isinstance(err, KeyboardInterrupt):
            for trial in trials.values():
                store.fail(trial, f"{type(err).__name__}: {err}")
        raise
    for i, cand in enumerate(batch):
        if records[i] is None:
            records[i] = EvaluationRecord(cand, fold, evaluator.evaluate(cand.array, fold), "memo", None)
            listener.on_evaluation(records[i])
    return records  # type: ignore[return-value]
