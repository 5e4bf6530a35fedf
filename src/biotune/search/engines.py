"""Search strategies behind one ask/tell interface, so that each is run, stored, resumed,
counted and finalised the same way (:func:`biotune.search.loop.run_search`).

- ``robust`` and ``memetic``: :class:`~biotune.search.evolution.MemeticEvolution` with the operator
  sets described there (``memetic`` is the paper's).
- ``random``: every genome drawn from the initial population's prior (each gene U[0, 1],
  all-frozen genomes re-drawn), batch after batch.
- ``tpe`` (the default): Optuna's ``TPESampler`` over the same space. Its first batch is drawn from the same
  prior as ``random``; afterwards TPE proposes, and an all-frozen proposal is told as failed
  and re-drawn (the prior's rule), never repaired. Optuna's default of 10 random start-up
  trials would make TPE equal random search on small budgets, hence one batch.

With ``SearchConfig.train_head`` every strategy searches the smaller space whose genomes
train the classifier head: the prior re-draws genomes that freeze it, the memetic operators'
results are repaired, TPE's proposals that freeze it are re-drawn like all-frozen ones.

Every strategy spends :func:`~biotune.search.evolution.batch_sizes` evaluations per generation, and
generation g trains on fold g mod n_folds, so at equal settings they cost the same.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from .._registry import STRATEGIES
from ..config import SearchConfig
from ..errors import BioTuneError
from .evolution import (
    Candidate,
    GenerationStats,
    MemeticEvolution,
    batch_sizes,
    gaussian_mutation,
    keep,
    perturb_variant,
    uniform_crossover,
)
from .genome import check_initial, is_valid, random_genome, warm_start_genomes

__all__ = ["STRATEGIES", "SearchStrategy", "RandomSearch", "TPESearch", "make_engine", "warm_start"]

_MAX_REDRAWS = 1000


class SearchStrategy(Protocol):
    """What :func:`biotune.search.loop.run_search` asks of a strategy (the contract tests check it for
    every registered one, ``tests/search/test_strategies.py``).

    ``ask()`` returns the pending batch of candidates (the same batch until it is told; an empty list
    once ``done``); ``tell(fitnesses)`` takes one Φ per candidate, in order, and returns the
    generation's statistics. A strategy is deterministic for its seed: a resumed search rebuilds it and
    replays the stored fitnesses, and gets the same proposals (its state is the told history).
    """

    generation: int
    history: list[GenerationStats]

    @property
    def done(self) -> bool: ...

    def ask(self) -> list[Candidate]: ...

    def tell(self, fitnesses: Sequence[float]) -> GenerationStats: ...


class _BatchSampler:
    """Shared bookkeeping of the sampling strategies: batches of given sizes, stats per batch."""

    def __init__(self, n_blocks: int, batches: Sequence[int], head: bool = False,
                 initial: Sequence[np.ndarray] = ()) -> None:
        if not batches or any(int(b) < 1 for b in batches):
            raise BioTuneError(f"`batches` must be positive sizes, got {list(batches)}")
        self.initial = check_initial(initial, n_blocks, batches[0], head=head)
        self.n_blocks = n_blocks
        self.head = head
        self.batches = tuple(int(b) for b in batches)
        self.generations = len(self.batches) - 1
        self.generation = -1
        self.history: list[GenerationStats] = []
        self._pending: list[Candidate] | None = None
        self._best = (np.inf, ())

    @property
    def done(self) -> bool:
        return self.generation >= self.generations

    def ask(self) -> list[Candidate]:
        if self._pending is None and not self.done:
            g = self.generation + 1
            self._pending = [
                Candidate(tuple(float(x) for x in self.initial[i]), "warm", g, i) if g == 0 and i < len(self.initial)
                else Candidate(tuple(float(x) for x in self._draw(g, i)), "sample", g, i)
                for i in range(self.batches[g])
            ]
        return list(self._pending or [])

    def tell(self, fitnesses: Sequence[float]) -> GenerationStats:
        if self._pending is None:
            raise BioTuneError("tell() without a pending ask()")
        f = np.where(np.isfinite(np.asarray(fitnesses, dtype=float)), fitnesses, 1.0)
        if f.shape != (len(self._pending),):
            raise BioTuneError(f"tell() needs {len(self._pending)} fitness values, got {f.size}")
        self._learn(f)
        i = int(np.argmin(f))
        if f[i] < self._best[0]:
            self._best = (float(f[i]), self._pending[i].genes)
        self.generation = self._pending[0].generation
        self._pending = None
        stats = GenerationStats(self.generation, self._best[0], float(f.mean()), self._best[1])
        self.history.append(stats)
        return stats

    def _draw(self, generation: int, slot: int) -> np.ndarray:
        raise NotImplementedError

    def _learn(self, fitness: np.ndarray) -> None:
        pass


class RandomSearch(_BatchSampler):
    """Random search over the genome space with the initial population's prior.

    Example:
        >>> engine = RandomSearch(3, (4, 4), rng=np.random.default_rng(0))
        >>> while not engine.done:
        ...     engine.tell([float(c.array.sum()) for c in engine.ask()])
        >>> engine.generation
        1
    """

    def __init__(self, n_blocks: int, batches: Sequence[int], *, rng: np.random.Generator,
                 head: bool = False, initial: Sequence[np.ndarray] = ()) -> None:
        super().__init__(n_blocks, batches, head, initial)
        self.rng = rng

    def _draw(self, generation: int, slot: int) -> np.ndarray:
        return random_genome(self.rng, self.n_blocks, head=self.head)


class TPESearch(_BatchSampler):
    """Optuna's TPE sampler over the genome space, asked one batch at a time.

    The first batch comes from the prior (``rng``); the sampler then learns from every told
    batch. Deterministic for a seed, so a resumed search replays it exactly.
    """

    def __init__(self, n_blocks: int, batches: Sequence[int], *, rng: np.random.Generator, seed: int,
                 head: bool = False, initial: Sequence[np.ndarray] = ()) -> None:
        import optuna

        super().__init__(n_blocks, batches, head, initial)
        self.rng = rng
        self._optuna = optuna
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=0)
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        self._names = [f"g{i:02d}" for i in range(n_blocks + 1)]
        self._space = {n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in self._names}
        self._trials: list = []

    def ask(self) -> list[Candidate]:
        if self._pending is None and self.generation == -1:
            # The warm start: enqueued and asked first (Optuna's queue is first in, first out), so
            # the trials stay in slot order and TPE learns from these runs like any other.
            for genome in self.initial:
                self.study.enqueue_trial(dict(zip(self._names, genome)))
                self._trials.append(self.study.ask(self._space))
        return super().ask()

    def _draw(self, generation: int, slot: int) -> np.ndarray:
        if generation == 0:
            genome = random_genome(self.rng, self.n_blocks, head=self.head)
            self.study.enqueue_trial(dict(zip(self._names, genome)))
            self._trials.append(self.study.ask(self._space))
            return genome
        for _ in range(_MAX_REDRAWS):
            trial = self.study.ask(self._space)
            genome = np.array([trial.params[n] for n in self._names])
            if is_valid(genome, head=self.head):
                self._trials.append(trial)
                return genome
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        raise BioTuneError(f"TPE proposed {_MAX_REDRAWS} invalid genomes in a row")

    def _learn(self, fitness: np.ndarray) -> None:
        for trial, value in zip(self._trials, fitness):
            self.study.tell(trial, float(value))
        self._trials = []


def warm_start(search: SearchConfig, n_blocks: int) -> list[tuple[str, np.ndarray]]:
    """The named configurations that open the first batch of every strategy (none when
    ``search.warm_start`` is off): a third of the first batch at most."""
    if not search.warm_start:
        return []
    return warm_start_genomes(n_blocks, batch_sizes(search.population, search.elites, search.generations)[0] // 3)


def make_engine(strategy: str, n_blocks: int, search: SearchConfig, seed: int) -> SearchStrategy:
    """The engine of ``strategy`` (a name in :data:`STRATEGIES`) for a model of ``n_blocks`` blocks,
    seeded with ``seed``. Every strategy's first batch opens with the same :func:`warm_start` configurations.

    Raises:
        BioTuneError: an unknown strategy.
    """
    build = STRATEGIES.get(strategy)
    head = search.train_head
    initial = [g for _, g in warm_start(search, n_blocks)]
    return build(n_blocks, search, seed=seed, rng=np.random.default_rng(seed), head=head, initial=initial)


@STRATEGIES.register("tpe", "Optuna's TPE over the paper's genome space (the default: best at equal compute)")
def _tpe(n_blocks: int, search: SearchConfig, *, seed: int, rng, head: bool, initial) -> TPESearch:
    batches = batch_sizes(search.population, search.elites, search.generations)
    return TPESearch(n_blocks, batches, rng=rng, seed=seed, head=head, initial=initial)


@STRATEGIES.register("random", "random search with the initial population's prior")
def _random(n_blocks: int, search: SearchConfig, *, seed: int, rng, head: bool, initial) -> RandomSearch:
    batches = batch_sizes(search.population, search.elites, search.generations)
    return RandomSearch(n_blocks, batches, rng=rng, head=head, initial=initial)


@STRATEGIES.register("memetic", "the paper's memetic evolution (exploit, breed, extinction)")
def _memetic(n_blocks: int, search: SearchConfig, *, seed: int, rng, head: bool, initial) -> MemeticEvolution:
    return MemeticEvolution(n_blocks, population_size=search.population, n_elites=search.elites,
                            generations=search.generations, rng=rng, head=head, initial=initial)


@STRATEGIES.register("robust", "memetic evolution with uniform crossover, Gaussian mutation, newcomers and "
                               "truncation survival")
def _robust(n_blocks: int, search: SearchConfig, *, seed: int, rng, head: bool, initial) -> MemeticEvolution:
    newcomers = max(1, search.population // 4)
    return MemeticEvolution(
        n_blocks, population_size=search.population, n_elites=search.elites, generations=search.generations,
        rng=rng, crossover=uniform_crossover, mutation=gaussian_mutation, adoption=keep,
        exploitation=perturb_variant, newcomers=newcomers, survival="truncation", head=head, initial=initial,
    )
