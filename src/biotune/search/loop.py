"""The search loop: an engine asks, the fitness evaluator answers, the study records.

Any engine of :mod:`biotune.search.engines` can drive it. Each candidate's fitness told to the
engine is the noise-aware estimate of its configuration (the mean over all its runs so far).
The result ranks every distinct configuration evaluated, over all generations, by that
estimate: the final phase fine-tunes the top k of it.

Engines are deterministic for their seed, so a resumed run replays from the start: each
asked evaluation already in the study is read back (and only then counted as evidence)
instead of trained, and the run carries on from the first one that is not. The result
equals an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from ..errors import BioTuneError
from ..training.session import Compute
from .evolution import Candidate, GenerationStats
from .fitness import Evaluation, FitnessEvaluator
from .genome import decode
from .budget import TimeBudget
from .pruning import Pruner, Reference
from .study import TrialStore

__all__ = ["EvaluationRecord", "RankedConfiguration", "SearchResult", "SearchListener", "run_search"]

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
class RankedConfiguration:
    """A distinct configuration the search evaluated, with its noise-aware fitness.

    Attributes:
        genes: the first genome asked that decodes to it.
        fitness: 1 − mean validation accuracy over all its runs (all folds and seeds).
        runs: how many runs that mean covers.
    """

    genes: tuple[float, ...]
    fitness: float
    runs: int


@dataclass(frozen=True)
class SearchResult:
    """Outcome of a search.

    Attributes:
        ranking: every distinct configuration evaluated, best estimate first (ties: the one
            asked first).
        history: every evaluation in order.
        generations: population statistics after each generation (0 = initial).
        seconds: wall time of this process's part of the search.
        stopped_by: ``"generations done"``, or ``"time limit"`` when a :class:`TimeBudget`
            stopped it before its last generation.
    """

    ranking: tuple[RankedConfiguration, ...]
    history: tuple[EvaluationRecord, ...]
    generations: tuple[GenerationStats, ...]
    seconds: float
    stopped_by: str = "generations done"

    @property
    def best_genes(self) -> tuple[float, ...]:
        """The configuration with the best estimated fitness."""
        return self.ranking[0].genes

    @property
    def best_fitness(self) -> float:
        return self.ranking[0].fitness

    def top(self, k: int) -> tuple[RankedConfiguration, ...]:
        """The ``k`` best distinct configurations (fewer when fewer were evaluated)."""
        return self.ranking[:k]

    @property
    def initial_mean_fitness(self) -> float:
        """Mean fitness of the first generation (of its evaluations that ran, when a time limit cut it)."""
        if self.generations:
            return self.generations[0].mean
        first = [r.evaluation.fitness for r in self.history if r.source != "memo"]
        return float(np.mean(first)) if first else float("nan")

    @property
    def pruned(self) -> int:
        """Evaluations a pruner stopped early."""
        return sum(1 for r in self.history if r.source != "memo" and r.evaluation.pruned)

    @property
    def compute(self) -> Compute:
        """Training the search consumed, earlier processes of a resumed run included."""
        total = Compute()
        for record in self.history:
            total = total + record.evaluation.compute
        return total


class SearchListener:
    """Hooks for progress display (search and final runs); every method is a no-op by default."""

    def on_estimate(self, estimate) -> None:
        """The measured time estimate of the whole job (:class:`biotune.training.estimate.Estimate`), before it starts."""

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
    engine,
    evaluator: FitnessEvaluator,
    store: TrialStore,
    *,
    listener: SearchListener | None = None,
    budget: TimeBudget | None = None,
    pruner: Pruner | None = None,
) -> SearchResult:
    """Drive ``engine`` to its last generation, evaluating each batch and recording it.

    Generation g trains on fold ``g mod n_folds``. Evaluations already in ``store`` are
    read back (resume); a configuration asked twice in a batch is trained once. With a
    ``budget``, a generation that (with the final phase) would not fit the time limit is not
    asked: the search ends with what it has. With a ``pruner``, each run of a generation may be
    stopped early against the evaluations of the earlier generations (see
    :mod:`biotune.search.pruning`); evaluations are indexed in the order asked. A pruner that
    stops between seeds (``wilcoxon``) trains each generation seed by seed instead
    (:func:`_by_seed`).
    """
    listener = listener or SearchListener()
    n_folds = evaluator.n_folds
    stored = store.completed()
    if stored:
        logger.info("resuming: %d finished evaluations found in the study", len(stored))
    start = time.perf_counter()
    history: list[EvaluationRecord] = []
    seen: dict[tuple, tuple[float, ...]] = {}  # configuration -> first genome asked
    stopped_by = "generations done"
    asked = 0
    offset = 0  # index of the batch's first evaluation
    references: list[Reference] = []
    while not engine.done:
        if budget is not None and not budget.allows(asked):
            stopped_by = "time limit"
            logger.warning("time limit: generation %d and the final phase would not fit; the search stops after "
                           "%d generation(s)", asked, asked)
            break
        generation_start = time.perf_counter()
        batch = engine.ask()
        g = batch[0].generation
        fold = g % n_folds
        listener.on_generation_start(g, fold, batch)
        checks = (pruner or Pruner("none", 1)).checks(references, offset, len(batch))
        # A run starts only if it and the final phase still fit; the first generation's first
        # evaluation always runs, so a search cut by its limit still has a configuration to deliver.
        may_start = None
        if budget is not None:
            may_start = budget.may_start if asked > 0 else _after_first(len(evaluator.seeds), budget.may_start)
        answered = _answer_batch(batch, fold, evaluator, store, stored, listener, checks, may_start,
                                 by_seed=pruner is not None and pruner.by_seed)
        records = [r for r in answered if r is not None]
        history.extend(records)
        if len(records) < len(batch):  # the time limit came within this generation: it is not told
            stopped_by = "time limit"
            logger.warning("time limit: %d of generation %d's %d evaluations were not started; the search stops "
                           "with %d complete generation(s)", len(batch) - len(records), g, len(batch), asked)
            for record in records:
                seen.setdefault(decode(record.candidate.array, 1.0).key(), record.candidate.genes)
            break
        references += [Reference(offset + r.candidate.slot, r.evaluation.curve, r.evaluation.pruned) for r in records
                       if r.source != "memo" and not r.evaluation.diverged]
        offset += len(batch)
        for record in records:
            seen.setdefault(decode(record.candidate.array, 1.0).key(), record.candidate.genes)
            logger.debug(
                "gen %d slot %d %s fold %d: fitness %.4f (%s)",
                g, record.candidate.slot, record.candidate.role, fold, record.evaluation.fitness, record.source,
            )
        stats = engine.tell([evaluator.estimate(c.array)[0] for c in batch])
        if budget is not None and any(r.source == "trained" for r in records):  # read-back generations are instant
            budget.observe(asked, time.perf_counter() - generation_start)
        asked += 1
        listener.on_generation_end(stats)
    ranking = []
    for genes in seen.values():
        fitness, runs = evaluator.estimate(np.asarray(genes))
        ranking.append(RankedConfiguration(genes, fitness, runs))
    ranking.sort(key=lambda r: r.fitness)  # stable: ties keep the order first asked
    return SearchResult(
        ranking=tuple(ranking),
        history=tuple(history),
        generations=tuple(engine.history),
        seconds=time.perf_counter() - start,
        stopped_by=stopped_by,
    )


def _after_first(runs: int, may_start):
    """``may_start`` that says yes to the first ``runs`` runs (one evaluation) whatever the clock."""
    asked = [0]

    def gate() -> bool:
        asked[0] += 1
        return asked[0] <= runs or may_start()

    return gate


def _answer_batch(batch, fold, evaluator, store, stored, listener, checks,
                  may_start=None, by_seed: bool = False) -> list[EvaluationRecord | None]:
    """Records of one generation, in slot order: read back, memoised, or trained together.

    Each candidate's seeds (its configuration's next replicate on the fold) are fixed from
    the evidence before the batch, so a resumed batch asks exactly what the first process
    asked. A configuration asked twice is trained once and recorded as one trial; the
    duplicate is answered from the memo afterwards. With ``may_start`` (a time limit), the
    evaluations not started are ``None`` and their trials failed, so a resume runs them. With
    ``by_seed`` the batch trains seed by seed and may stop candidates between seeds (:func:`_by_seed`);
    such an evaluation holds the seeds it ran, a prefix of those asked.
    """
    seeds = [evaluator.seeds_for(c.array, fold) for c in batch]
    records: list[EvaluationRecord | None] = [None] * len(batch)
    for i, cand in enumerate(batch):
        previous = stored.get((cand.generation, cand.slot))
        if previous is None:
            continue
        ev = previous.evaluation
        ran = tuple(ev.seeds)
        if (not np.array_equal(np.asarray(previous.genes), cand.array) or ev.fold != fold
                or ran != seeds[i][:len(ran)] or (len(ran) < len(seeds[i]) and not ev.pruned)):
            raise BioTuneError(
                f"the study's trial {previous.trial_number} (generation {cand.generation}, slot {cand.slot}) "
                "does not match this search's genome; was it written by another version or settings?"
            )
        evaluator.remember(cand.array, fold, dict(zip(ev.seeds, ev.accuracies)), ev.diverged_seeds, ev.pruned_seeds)
        records[i] = EvaluationRecord(cand, fold, ev, "study", previous.trial_number)
        listener.on_evaluation(records[i])
    to_train: list[int] = []
    claimed: set[tuple] = set()
    for i, cand in enumerate(batch):
        if records[i] is not None:
            continue
        key = (decode(cand.array, 1.0).key(), seeds[i])
        if evaluator.is_memoised(cand.array, fold, seeds[i]) or key in claimed:
            continue  # answered from the memo below
        claimed.add(key)
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
        if by_seed:
            _by_seed(evaluator, [(batch[i].array, fold) for i in to_train], [seeds[i] for i in to_train], finished,
                     listener.on_epoch, may_start)
        else:
            evaluator.evaluate_many([(batch[i].array, fold) for i in to_train], seeds=[seeds[i] for i in to_train],
                                    on_evaluated=finished, on_epoch=listener.on_epoch,
                                    pruning=[checks[i] for i in to_train], may_start=may_start)
    except BaseException as err:
        # A failed evaluation must not stay RUNNING; Ctrl-C leaves it to the resume logic.
        if not isinstance(err, KeyboardInterrupt):
            for trial in trials.values():
                store.fail(trial, f"{type(err).__name__}: {err}")
        raise
    for i, trial in trials.items():  # not started before the time limit: failed, evaluated on resume
        store.fail(trial, "not started: the time limit came first")
    ran = {decode(r.candidate.array, 1.0).key(): r.evaluation.seeds for r in records if r is not None} if by_seed else {}
    for i, cand in enumerate(batch):
        # A repeat is answered with the runs its first asking got (fewer seeds when it was stopped between them).
        its = ran.get(decode(cand.array, 1.0).key(), seeds[i]) if ran else seeds[i]
        if records[i] is None and evaluator.is_memoised(cand.array, fold, its):
            records[i] = EvaluationRecord(cand, fold, evaluator.evaluate(cand.array, fold, seeds=its), "memo", None)
            listener.on_evaluation(records[i])
    return records


def _by_seed(evaluator: FitnessEvaluator, items, seeds, finished, on_epoch, may_start) -> None:
    """Evaluate ``items`` seed by seed: every candidate still running trains its j-th seed (all on the
    same fold, and, for first evaluations, the same seeds: paired), then each one whose per-seed fitness
    is worse than the leader's (the lowest mean so far), paired, by Optuna's ``WilcoxonPruner``
    (:func:`~biotune.search.pruning.wilcoxon_prunes`) stops there. ``finished(j, evaluation)`` gets each
    candidate once it stops or has run all its seeds; its evaluation holds the seeds it ran, and is
    ``pruned`` when stopped early (by the test, or by a time limit after at least one seed)."""
    from .pruning import wilcoxon_prunes

    running = list(range(len(items)))
    values: list[list[float]] = [[] for _ in items]
    spent: list[list[Evaluation]] = [[] for _ in items]

    def finish(i: int, stopped: bool) -> None:
        ran = seeds[i][:len(spent[i])]
        ev = evaluator.evaluate(items[i][0], items[i][1], seeds=ran)  # from the memo: the accuracies, the curve
        ev = dataclasses.replace(
            ev, seconds=sum(e.seconds for e in spent[i]), trained=sum(e.trained for e in spent[i]),
            epochs=sum(e.epochs for e in spent[i]), images=sum(e.images for e in spent[i]),
            ram_peak=max(e.ram_peak for e in spent[i]), device_peak=max(e.device_peak for e in spent[i]),
            pruned_seeds=(ran[-1],) if stopped else ev.pruned_seeds)
        finished(i, ev)

    for j in range(max((len(s) for s in seeds), default=0)):
        stage = [i for i in running if j < len(seeds[i])]
        results = evaluator.evaluate_many([items[i] for i in stage], seeds=[(seeds[i][j],) for i in stage],
                                          on_epoch=on_epoch, may_start=may_start)
        for i, r in zip(stage, results):
            if r is not None:
                values[i].append(r.fitness)
                spent[i].append(r)
        if any(r is None for r in results):
            # The time limit: a candidate ends with the seeds it ran (stopped early); one that ran none is
            # never finished (its trial is failed, and a resume evaluates it).
            for i in running:
                if spent[i]:
                    finish(i, stopped=len(spent[i]) < len(seeds[i]))
            return
        for i in [i for i in stage if spent[i][-1].diverged or len(values[i]) == len(seeds[i])]:
            running.remove(i)
            finish(i, stopped=False)
        if not running:
            return
        leader = min(running, key=lambda i: float(np.mean(values[i])))
        for i in [i for i in running if i != leader and wilcoxon_prunes(values[i], values[leader])]:
            running.remove(i)
            finish(i, stopped=True)
