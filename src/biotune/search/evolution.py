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

Fitness told to the engine is an estimate: the search layer passes, for each candidate, the
mean over every evaluation its configuration has had (an elite re-scored adds evidence).

Two operator sets share this engine (see :func:`make_engine`):

- ``memetic`` (the paper's): the operators above, elites keep the best of themselves and
  their two ±δ variants, the rest of the population is the offspring.
- ``robust``: the same budget per generation spent differently. Each elite is re-scored and
  gets one variant that perturbs several genes, the threshold included, so exploitation can
  unfreeze a block as well as freeze one. The other slots are offspring of *uniform*
  crossover (each gene from one parent: no averaging toward the middle, no momentum),
  Gaussian mutation scaled by extinction and no adoption; a quarter of them are random
  newcomers drawn from the initial prior. The next population is the best N_p distinct
  configurations of everything evaluated this generation (elites included), by their mean
  fitness.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import BioTuneError
from .genome import check_initial, decode, random_genome, repair, trainable_mask

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
    "uniform_crossover",
    "gaussian_mutation",
    "keep",
    "perturb_variant",
    "batch_sizes",
    "ROLES",
]

logger = logging.getLogger(__name__)

ROLES = ("init", "warm", "elite", "exploit", "offspring", "newcomer", "sample")
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


def uniform_crossover(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each gene from parent A or B with equal chance; no momentum (``robust``).

    Unlike interpolation, the child's genes are parents' genes, so crossover does not pull
    the population toward the middle of [0, 1] (LR multiplier 1, half the blocks trainable).
    """
    take_a = rng.random(len(a)) < 0.5
    return np.where(take_a, a, b), np.zeros(len(a))


def gaussian_mutation(rng: np.random.Generator, genes: np.ndarray, mean_extinction: float) -> np.ndarray:
    """Mutate each gene with probability ē(1 − 1/D) + 1/D by N(0, 0.05 + 0.2·ē) (``robust``)."""
    d = len(genes)
    rate = mean_extinction * (1.0 - 1.0 / d) + 1.0 / d
    hit = rng.random(d) < rate
    return genes + np.where(hit, rng.normal(0.0, 0.05 + 0.2 * mean_extinction, d), 0.0)


def keep(rng: np.random.Generator, genes: np.ndarray, a: np.ndarray, b: np.ndarray, prototype: np.ndarray) -> np.ndarray:
    """No adoption (``robust``): adoption averages toward the parents and shrinks diversity."""
    return genes


def perturb_variant(rng: np.random.Generator, elite: np.ndarray) -> list[np.ndarray]:
    """One variant of an elite with 1–3 genes (threshold included) moved by N(0, 0.15).

    After BioIK's exploitation, which perturbs several variables at once. Any gene can move,
    frozen blocks' and the threshold too, so a variant can unfreeze a block.
    """
    d = len(elite)
    v = elite.copy()
    genes = rng.choice(d, size=min(d, int(rng.integers(1, 4))), replace=False)
    v[genes] = v[genes] + rng.normal(0.0, 0.15, len(genes))
    return [repair(np.clip(v, 0.0, 1.0))]


def _paper_exploitation(rng: np.random.Generator, elite: np.ndarray) -> list[np.ndarray]:
    return list(exploit_variants(rng, elite))


def batch_sizes(population: int, elites: int, generations: int) -> tuple[int, ...]:
    """Evaluations per generation of every strategy: N_p, then N_p + 2·elites each.

    The memetic search spends a generation on the elites re-scored, two exploit variants
    each and N_p − elites offspring; ``robust`` on the elites, one variant each and N_p
    offspring; random search and TPE on as many samples.

    Example:
        >>> batch_sizes(10, 3, 3)
        (10, 16, 16, 16)
    """
    return (population,) + (population + 2 * elites,) * generations


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
        exploitation: ``(rng, elite) -> list of variants`` (the paper's: two ±δ variants).
        newcomers: offspring slots filled with random genomes each generation.
        survival: ``"elitist"`` (the paper's: each elite keeps the best of itself and its
            variants, plus the offspring) or ``"truncation"`` (the best N_p distinct
            configurations of the whole generation).
        head: keep the last block (the classifier head) trainable in every asked genome:
            the prior re-draws genomes that freeze it, and operators' results are repaired
            (:func:`~biotune.search.genome.repair`). Off is the paper's genome space.

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
        exploitation: Callable = _paper_exploitation,
        newcomers: int = 0,
        survival: str = "elitist",
        head: bool = False,
        initial: Sequence[np.ndarray] = (),
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
        if survival not in ("elitist", "truncation"):
            raise BioTuneError(f"`survival` must be 'elitist' or 'truncation', got {survival!r}")
        self._crossover, self._mutation, self._adoption = crossover, mutation, adoption
        self._exploitation, self.survival = exploitation, survival
        probe = np.concatenate([np.full(n_blocks, 0.5), [0.0]])
        self.n_variants = len(exploitation(np.random.default_rng(0), probe))
        # Every generation costs the same: what exploitation does not spend goes to offspring.
        self.n_offspring = population_size + 2 * n_elites - n_elites * (1 + self.n_variants)
        if not 0 <= newcomers <= self.n_offspring:
            raise BioTuneError(f"`newcomers` must be in [0, {self.n_offspring}], got {newcomers}")
        self.newcomers = newcomers
        self.head = head
        self.initial = check_initial(initial, n_blocks, population_size, head=head)
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

    def ask(self) -> list[Candidate]:
        """The next generation's batch (the same batch again until it is told)."""
        if self._pending is not None:
            return list(self._pending)
        if self.done:
            return []
        g = self.generation + 1
        if g == 0:
            genomes = list(self.initial) + [random_genome(self.rng, self.n_blocks, head=self.head)
                                            for _ in range(self.population_size - len(self.initial))]
            batch = [Candidate(tuple(float(v) for v in x), "warm" if i < len(self.initial) else "init", 0, i)
                     for i, x in enumerate(genomes)]
            momentum = np.zeros((self.population_size, self.n_blocks + 1))
        else:
            batch, momentum = self._breed_generation(g)
        self._pending, self._pending_momentum = batch, momentum
        return list(batch)

    def _breed_generation(self, g: int) -> tuple[list[Candidate], np.ndarray]:
        n_e, n = self.n_elites, len(self.population)
        d = self.n_blocks + 1
        batch: list[Candidate] = []
        for i in range(n_e):
            batch.append(Candidate(tuple(self.population[i]), "elite", g, len(batch), (i,)))
        for i in range(n_e):
            for variant in self._exploitation(self.rng, self.population[i]):
                variant = repair(variant, head=self.head)
                batch.append(Candidate(tuple(variant), "exploit", g, len(batch), (i,)))
        momenta = []
        for k in range(self.n_offspring):
            if k >= self.n_offspring - self.newcomers:
                genes = random_genome(self.rng, self.n_blocks, head=self.head)
                momenta.append(np.zeros(d))
                batch.append(Candidate(tuple(genes), "newcomer", g, len(batch)))
                continue
            a = rank_select(self.rng, n)
            b = rank_select(self.rng, n, exclude=(a,))
            p = rank_select(self.rng, n)
            genes, momentum = self._offspring(a, b, p)
            momenta.append(momentum)
            batch.append(Candidate(tuple(genes), "offspring", g, len(batch), (a, b, p)))
        return batch, np.asarray(momenta).reshape(-1, d)

    def _offspring(self, a: int, b: int, p: int) -> tuple[np.ndarray, np.ndarray]:
        pop, mom = self.population, self.momentum
        crossed, carried = self._crossover(self.rng, pop[a], pop[b], mom[a], mom[b])
        mean_ext = 0.5 * (self.extinction[a] + self.extinction[b])
        genes = self._mutation(self.rng, crossed, mean_ext)
        genes = self._adoption(self.rng, genes, pop[a], pop[b], pop[p])
        genes = repair(np.clip(genes, 0.0, 1.0), head=self.head)
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
        elif self.survival == "elitist":
            n_e, v = self.n_elites, self.n_variants
            genes, momentum, fit = [], [], []
            for i in range(n_e):
                options = [(f[i], batch[i].array)]
                options += [(f[n_e + v * i + k], batch[n_e + v * i + k].array) for k in range(v)]
                # min() keeps the first of equal values: the elite itself wins ties
                best_f, best_genes = min(options, key=lambda o: o[0])
                genes.append(best_genes)
                momentum.append(self.momentum[i])
                fit.append(best_f)
            offspring = batch[n_e * (1 + v) :]
            genes += [c.array for c in offspring]
            momentum += list(self._pending_momentum)
            fit += list(f[n_e * (1 + v) :])
            genes, momentum, fit = np.array(genes), np.array(momentum), np.array(fit)
        else:
            genes, momentum, fit = self._truncate(batch, f)
        order = np.argsort(fit, kind="stable")
        self.population, self.momentum, self.fitness = genes[order], momentum[order], fit[order]
        self.extinction = extinction(self.fitness)
        self.generation = g
        self._pending = self._pending_momentum = None
        stats = GenerationStats(g, float(self.fitness[0]), float(self.fitness.mean()), tuple(self.population[0]))
        self.history.append(stats)
        logger.info("generation %d: best fitness %.4f, mean %.4f", g, stats.best, stats.mean)
        return stats

    def _truncate(self, batch: list[Candidate], f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best N_p distinct configurations of the generation (elites, variants, offspring).

        Two genomes that decode to the same mask and learning rates count once (the first
        asked, so an elite re-scored keeps its place and its momentum).
        """
        d = self.n_blocks + 1
        momentum_of = [self.momentum[c.parents[0]] if c.role == "elite" else np.zeros(d) for c in batch]
        offspring_start = len(batch) - self.n_offspring
        for j in range(self.n_offspring):
            momentum_of[offspring_start + j] = self._pending_momentum[j]
        seen, rows = set(), []
        for i in np.argsort(f, kind="stable"):
            key = decode(batch[i].array, 1.0).key()
            if key in seen:
                continue
            seen.add(key)
            rows.append(i)
            if len(rows) == self.population_size:
                break
        # Fewer distinct configurations than N_p (rare): the best repeats fill the population.
        rows += [i for i in np.argsort(f, kind="stable") if i not in rows][: self.population_size - len(rows)]
        rows = sorted(rows)  # batch order; tell() sorts by fitness
        return (np.array([batch[i].array for i in rows]), np.array([momentum_of[i] for i in rows]), f[rows])

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
