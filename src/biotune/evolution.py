"""The memetic evolutionary algorithm as a small deterministic ask/tell engine (numpy only).

After Starke, Hendrich & Zhang (2019), as the BioTune paper applies it. Each generation:

1. *exploit* each elite: one trainable gene perturbed by ±δ, δ = 0.25·U(−1, 1); the best of
   the elite and its two variants is kept;
2. *breed* offspring until the population is full: two distinct parents and a prototype by
   linear rank selection; per-gene random-interpolation crossover plus the parents'
   momentum; mutation with rate ē(1 − 1/D) + 1/D and size U(−1, 1)·ē; adoption toward the
   parents' mean and the prototype; new momentum = r·m + (final genes − crossed genes);
3. new population = elites + offspring sorted by fitness; extinction from rank and fitness.

A generation is one batch: the elites re-scored on the generation's fold, their exploit
variants and all offspring are asked at once and can be evaluated independently. Breeding
uses the previous population's ranks and extinctions, which all come from one fold; the new
population's fitnesses all come from the new fold, so selection never mixes folds.

Unlike Starke's sequential loop, parents are not removed from the mating pool when their
child is worse (that needs each child's fitness before the next is bred, which forbids
batch evaluation). Unlike the public BioTune code, extinction is computed for the initial
population too and momentum is added to the genes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import BioTuneError
from .genome import random_genome, repair, trainable_mask

__all__ = [
    "Candidate",
    "GenerationStats",
    "MemeticEvolution",
    "extinction",
    "rank_select",
    "crossover",
    "mutate",
    "adopt",
    "exploit_variants",
    "ROLES",
]

logger = logging.getLogger(__name__)

ROLES = ("init", "elite", "exploit", "offspring")
EXPLOIT_SCALE = 0.25


@dataclass(frozen=True)
class Candidate:
    """A genome the engine asks to be evaluated.

    Attributes:
        genes: the genome (block genes, then the threshold).
        role: ``init`` (random initial), ``elite`` (an elite re-scored on this fold),
            ``exploit`` (an elite's ±δ variant) or ``offspring``.
        generation: 0 for the initial population.
        slot: position in the generation's batch.
        parents: indices, in the previous sorted population, of the individuals it came
            from (the elite; or parent A, parent B, prototype).
    """

    genes: tuple[float, ...]
    role: str
    generation: int
    slot: int
    parents: tuple[int, ...] = ()

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.genes, dtype=float)


@dataclass(frozen=True)
class GenerationStats:
    """Fitness of a population after a generation (lower is better)."""

    generation: int
    best: float
    mean: float
    best_genes: tuple[float, ...]


def extinction(fitness_sorted: np.ndarray) -> np.ndarray:
    """Extinction e_i = (f_i + f_min·(i/(N−1) − 1)) / f_max for a population sorted best first.

    The best individual gets 0, the worst 1. When every fitness is 0 the formula is 0/0;
    its limit, the rank share i/(N−1), is returned.
    """
    f = np.asarray(fitness_sorted, dtype=float)
    n = len(f)
    grading = np.arange(n) / (n - 1) if n > 1 else np.zeros(1)
    f_min, f_max = f[0], f[-1]
    if f_max <= 0.0:
        return grading
    return (f + f_min * (grading - 1.0)) / f_max


def rank_select(rng: np.random.Generator, n: int, exclude: Sequence[int] = ()) -> int:
    """Linear rank selection on a population sorted best first: weight of rank i is n − i."""
    weights = np.arange(n, 0, -1, dtype=float)
    weights[list(exclude)] = 0.0
    return int(rng.choice(n, p=weights / weights.sum()))


def crossover(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene random interpolation w·A + (1−w)·B plus momentum r₁·m_A + r₂·m_B.

    Returns the crossed genes and the momentum term that was added.
    """
    d = len(a)
    w = rng.random(d)
    momentum = rng.random(d) * ma + rng.random(d) * mb
    return w * a + (1.0 - w) * b + momentum, momentum


def mutate(rng: np.random.Generator, genes: np.ndarray, mean_extinction: float) -> np.ndarray:
    """Mutate each gene with probability ē(1 − 1/D) + 1/D by U(−1, 1)·ē."""
    d = len(genes)
    rate = mean_extinction * (1.0 - 1.0 / d) + 1.0 / d
    hit = rng.random(d) < rate
    step = rng.uniform(-1.0, 1.0, d) * mean_extinction
    return genes + np.where(hit, step, 0.0)


def adopt(
    rng: np.random.Generator, genes: np.ndarray, a: np.ndarray, b: np.ndarray, prototype: np.ndarray
) -> np.ndarray:
    """Move toward the parents' mean and the prototype by random per-gene amounts."""
    d = len(genes)
    w = rng.random(d)
    toward_parents = w * rng.random(d) * (0.5 * (a + b) - genes)
    toward_prototype = (1.0 - w) * rng.random(d) * (prototype - genes)
    return genes + toward_parents + toward_prototype


def exploit_variants(rng: np.random.Generator, elite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two variants of an elite: one trainable block gene moved by +δ and by −δ."""
    trainable = np.flatnonzero(trainable_mask(elite))
    gene = int(rng.choice(trainable))
    delta = EXPLOIT_SCALE * rng.uniform(-1.0, 1.0)
    variants = []
    for sign in (1.0, -1.0):
        v = elite.copy()
        v[gene] = v[gene] + sign * delta
        variants.append(repair(np.clip(v, 0.0, 1.0)))
    return variants[0], variants[1]


class MemeticEvolution:
    """Deterministic memetic EA over genomes in [0, 1]^D, driven by ``ask()``/``tell()``.

    Args:
        n_blocks: number of blocks B+1; genomes have ``n_blocks + 1`` genes.
        population_size: N_p.
        n_elites: elites kept and exploited, in [1, N_p).
        generations: generations after the initial population.
        rng: the only source of randomness.
        crossover, mutation, adoption: replaceable operators with the signatures of
            :func:`crossover`, :func:`mutate`, :func:`adopt`.

    Example:
        >>> engine = MemeticEvolution(3, population_size=4, n_elites=1, generations=1,
        ...                           rng=np.random.default_rng(0))
        >>> while not engine.done:
        ...     batch = engine.ask()
        ...     engine.tell([float(c.array.sum()) for c in batch])
        >>> len(engine.population), engine.generation
        (4, 1)

    Notes:
        Genes stay in [0, 1]; every asked genome is valid (some block trainable); the
        population after each ``tell`` is sorted best first and keeps its elites.
    """

    def __init__(
        self,
        n_blocks: int,
        *,
        population_size: int = 10,
        n_elites: int = 3,
        generations: int = 3,
        rng: np.random.Generator,
        crossover: Callable = crossover,
        mutation: Callable = mutate,
        adoption: Callable = adopt,
    ) -> None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"`rng` must be a numpy.random.Generator, got {type(rng).__name__}")
        if n_blocks < 1:
            raise BioTuneError(f"`n_blocks` must be at least 1, got {n_blocks}")
        if population_size < 2:
            raise BioTuneError(f"`population_size` must be at least 2, got {population_size}")
        if not 1 <= n_elites < population_size:
            raise BioTuneError(f"`n_elites` must be in [1, population_size={population_size}), got {n_elites}")
        if generations < 0:
            raise BioTuneError(f"`generations` must be at least 0, got {generations}")
        self.n_blocks = n_blocks
        self.population_size = population_size
        self.n_elites = n_elites
        self.generations = generations
        self.rng = rng
        self._crossover, self._mutation, self._adoption = crossover, mutation, adoption
        self.generation = -1  # last finished generation
        self.population = np.empty((0, n_blocks + 1))
        self.fitness = np.empty(0)
        self.momentum = np.empty((0, n_blocks + 1))
        self.extinction = np.empty(0)
        self.history: list[GenerationStats] = []
        self._pending: list[Candidate] | None = None
        self._pending_momentum: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return self.generation >= self.generations

    @property
    def best(self) -> tuple[np.ndarray, float]:
        """Best genome of the current population and its fitness."""
        if self.generation < 0:
            raise BioTuneError("no population yet: call ask() and tell() first")
        return self.population[0].copy(), float(self.fitness[0])

    def ask(self) -> list[Candidate]:
        """The next generation's batch (the same batch again until it is told)."""
        if self._pending is not None:
            return list(self._pending)
        if self.done:
            return []
        g = self.generation + 1
        if g == 0:
            genomes = [random_genome(self.rng, self.n_blocks) for _ in range(self.population_size)]
            batch = [Candidate(tuple(x), "init", 0, i) for i, x in enumerate(genomes)]
            momentum = np.zeros((self.population_size, self.n_blocks + 1))
        else:
            batch, momentum = self._breed_generation(g)
        self._pending, self._pending_momentum = batch, momentum
        return list(batch)

    def _breed_generation(self, g: int) -> tuple[list[Candidate], np.ndarray]:
        n_e, n = self.n_elites, self.population_size
        batch: list[Candidate] = []
        for i in range(n_e):
            batch.append(Candidate(tuple(self.population[i]), "elite", g, len(batch), (i,)))
        for i in range(n_e):
            plus, minus = exploit_variants(self.rng, self.population[i])
            batch.append(Candidate(tuple(plus), "exploit", g, len(batch), (i,)))
            batch.append(Candidate(tuple(minus), "exploit", g, len(batch), (i,)))
        momenta = []
        for _ in range(n - n_e):
            a = rank_select(self.rng, n)
            b = rank_select(self.rng, n, exclude=(a,))
            p = rank_select(self.rng, n)
            genes, momentum = self._offspring(a, b, p)
            momenta.append(momentum)
            batch.append(Candidate(tuple(genes), "offspring", g, len(batch), (a, b, p)))
        return batch, np.asarray(momenta)

    def _offspring(self, a: int, b: int, p: int) -> tuple[np.ndarray, np.ndarray]:
        pop, mom = self.population, self.momentum
        crossed, carried = self._crossover(self.rng, pop[a], pop[b], mom[a], mom[b])
        mean_ext = 0.5 * (self.extinction[a] + self.extinction[b])
        genes = self._mutation(self.rng, crossed, mean_ext)
        genes = self._adoption(self.rng, genes, pop[a], pop[b], pop[p])
        genes = repair(np.clip(genes, 0.0, 1.0))
        momentum = self.rng.random(len(genes)) * carried + (genes - crossed)
        return genes, momentum

    def tell(self, fitnesses: Sequence[float]) -> GenerationStats:
        """Report the fitness of each candidate of the last ``ask()``, in order.

        Non-finite fitness (a failed evaluation) counts as the worst value, 1.0.

        Returns:
            The statistics of the new population.
        """
        if self._pending is None:
            raise BioTuneError("tell() without a pending ask()")
        f = np.asarray(fitnesses, dtype=float)
        if f.shape != (len(self._pending),):
            raise BioTuneError(f"tell() needs {len(self._pending)} fitness values, got {f.size}")
        f = np.where(np.isfinite(f), f, 1.0)
        batch, g = self._pending, self._pending[0].generation
        if g == 0:
            genes = np.array([c.genes for c in batch])
            momentum, fit = self._pending_momentum, f
        else:
            n_e = self.n_elites
            genes, momentum, fit = [], [], []
            for i in range(n_e):
                options = [(f[i], batch[i].array)]
                options += [(f[n_e + 2 * i + k], batch[n_e + 2 * i + k].array) for k in (0, 1)]
                # min() keeps the first of equal values: the elite itself wins ties
                best_f, best_genes = min(options, key=lambda o: o[0])
                genes.append(best_genes)
                momentum.append(self.momentum[i])
                fit.append(best_f)
            offspring = batch[3 * n_e :]
            genes += [c.array for c in offspring]
            momentum += list(self._pending_momentum)
            fit += list(f[3 * n_e :])
            genes, momentum, fit = np.array(genes), np.array(momentum), np.array(fit)
        order = np.argsort(fit, kind="stable")
        self.population, self.momentum, self.fitness = genes[order], momentum[order], fit[order]
        self.extinction = extinction(self.fitness)
        self.generation = g
        self._pending = self._pending_momentum = None
        stats = GenerationStats(g, float(self.fitness[0]), float(self.fitness.mean()), tuple(self.population[0]))
        self.history.append(stats)
        logger.info("generation %d: best fitness %.4f, mean %.4f", g, stats.best, stats.mean)
        return stats

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; :meth:`load_state_dict` restores it exactly."""
        return {
            "n_blocks": self.n_blocks,
            "population_size": self.population_size,
            "n_elites": self.n_elites,
            "generations": self.generations,
            "generation": self.generation,
            "population": self.population.tolist(),
            "fitness": self.fitness.tolist(),
            "momentum": self.momentum.tolist(),
            "extinction": self.extinction.tolist(),
            "history": [[s.generation, s.best, s.mean, list(s.best_genes)] for s in self.history],
            "pending": None if self._pending is None else [
                [list(c.genes), c.role, c.generation, c.slot, list(c.parents)] for c in self._pending
            ],
            "pending_momentum": None if self._pending_momentum is None else self._pending_momentum.tolist(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("n_blocks", "population_size", "n_elites", "generations"):
            if state[key] != getattr(self, key):
                raise BioTuneError(f"engine state has {key}={state[key]}, this engine {getattr(self, key)}")
        d = self.n_blocks + 1
        self.generation = int(state["generation"])
        self.population = np.asarray(state["population"], dtype=float).reshape(-1, d)
        self.fitness = np.asarray(state["fitness"], dtype=float)
        self.momentum = np.asarray(state["momentum"], dtype=float).reshape(-1, d)
        self.extinction = np.asarray(state["extinction"], dtype=float)
        self.history = [GenerationStats(g, b, m, tuple(x)) for g, b, m, x in state["history"]]
        pending = state["pending"]
        self._pending = None if pending is None else [
            Candidate(tuple(x), r, g, s, tuple(p)) for x, r, g, s, p in pending
        ]
        pm = state["pending_momentum"]
        self._pending_momentum = None if pm is None else np.asarray(pm, dtype=float).reshape(-1, d)
        self.rng.bit_generator.state = state["rng"]
