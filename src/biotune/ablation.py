"""Search ablations: the same genome space, folds, seeds and budget, driven by an Optuna sampler.

``random`` (Optuna's ``RandomSampler``) and ``tpe`` (``TPESampler``) replace the memetic engine
and nothing else: generation g of the BioTune search had b_g evaluations on fold
g mod n_folds, and so does the ablation, with the same training seeds and the same memoised
evaluator. A sampled genome that freezes every block is repaired the way the engine repairs
one (:func:`biotune.genome.repair`); the sampler is told the fitness of what it proposed. What
the ablation returns is the genome with the best fitness over all its evaluations.

TPE proposes at random for the first batch (the size of the engine's initial population) and
from its model afterwards; Optuna's default of 10 random trials would make TPE identical to
random search on small budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import BioTuneError
from .fitness import Evaluation, FitnessEvaluator
from .genome import repair

__all__ = ["SAMPLERS", "SamplerSearchResult", "sampler_search", "batch_sizes"]

SAMPLERS = ("random", "tpe")


@dataclass(frozen=True)
class SamplerSearchResult:
    """Outcome of an ablation search.

    Attributes:
        best_genes: the genome (repaired) with the lowest fitness over every evaluation.
        best_fitness: its fitness.
        history: ``(generation, fold, genes, evaluation)`` of every evaluation, in order.
    """

    best_genes: tuple[float, ...]
    best_fitness: float
    history: tuple[tuple[int, int, tuple[float, ...], Evaluation], ...]


def batch_sizes(population: int, elites: int, generations: int) -> tuple[int, ...]:
    """Evaluations per generation of the memetic search: N_p, then 3·elites + N_p − elites each.

    Example:
        >>> batch_sizes(10, 3, 3)
        (10, 16, 16, 16)
    """
    return (population,) + (3 * elites + population - elites,) * generations


def sampler_search(
    kind: str,
    evaluator: FitnessEvaluator,
    n_blocks: int,
    batches: Sequence[int],
    *,
    seed: int,
) -> SamplerSearchResult:
    """Run ``sum(batches)`` evaluations proposed by Optuna's ``kind`` sampler.

    Each batch is asked together (like a generation) and evaluated on fold
    ``g mod n_folds``; the sampler learns from every finished batch.
    """
    import optuna

    if kind not in SAMPLERS:
        raise BioTuneError(f"unknown search ablation {kind!r}; known: {', '.join(SAMPLERS)}")
    if kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:  # random proposals for the first batch only, like the engine's initial population
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=batches[0])
    study = optuna.create_study(direction="minimize", sampler=sampler)
    names = [f"{i:02d}" for i in range(n_blocks)] + ["threshold"]
    space = {n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in names}
    history = []
    for g, size in enumerate(batches):
        fold = g % evaluator.n_folds
        trials = [study.ask(space) for _ in range(size)]
        genomes = [repair(np.array([t.params[n] for n in names])) for t in trials]
        evaluations = evaluator.evaluate_many([(genome, fold) for genome in genomes])
        for trial, genome, evaluation in zip(trials, genomes, evaluations):
            study.tell(trial, evaluation.fitness)
            history.append((g, fold, tuple(float(x) for x in genome), evaluation))
    best = min(history, key=lambda item: item[3].fitness)
    return SamplerSearchResult(best[2], best[3].fitness, tuple(history))
