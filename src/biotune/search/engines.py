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

import importlib.util
import warnings
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

__all__ = ["STRATEGIES", "SearchStrategy", "RandomSearch", "OptunaSearch", "TPESearch", "CmaEsSearch", "StructuredSearch",
           "structured_genome", "make_engine", "warm_start"]

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
        ...     _ = engine.tell([float(c.array.sum()) for c in engine.ask()])
        >>> engine.generation
        1
    """

    def __init__(self, n_blocks: int, batches: Sequence[int], *, rng: np.random.Generator,
                 head: bool = False, initial: Sequence[np.ndarray] = ()) -> None:
        super().__init__(n_blocks, batches, head, initial)
        self.rng = rng

    def _draw(self, generation: int, slot: int) -> np.ndarray:
        return random_genome(self.rng, self.n_blocks, head=self.head)


class OptunaSearch(_BatchSampler):
    """An Optuna sampler over the genome space, asked one batch at a time.

    The first batch comes from the prior (``rng``), enqueued so that the sampler learns from it
    like from any other batch; an invalid proposal (every block frozen, or the head with
    ``head``) is told as failed and re-drawn (the prior's rule), never repaired. Deterministic
    for a seed, so a resumed search replays it exactly. Subclasses choose the sampler
    (:meth:`_sampler`) and may search a smaller space that maps onto genomes (:meth:`_space`,
    :meth:`_prior`, :meth:`_genome`).
    """

    def __init__(self, n_blocks: int, batches: Sequence[int], *, rng: np.random.Generator, seed: int,
                 head: bool = False, initial: Sequence[np.ndarray] = ()) -> None:
        import optuna

        super().__init__(n_blocks, batches, head, initial)
        self.rng = rng
        self.seed = seed
        self._optuna = optuna
        self.study = optuna.create_study(direction="minimize", sampler=self._sampler())
        self._names = [f"g{i:02d}" for i in range(n_blocks + 1)]
        self._distributions = self._space()
        self._trials: list = []

    def _sampler(self):
        raise NotImplementedError

    def _space(self) -> dict:
        """The distributions the sampler proposes in (default: one gene per name, in [0, 1])."""
        return {n: self._optuna.distributions.FloatDistribution(0.0, 1.0) for n in self._names}

    def _prior(self) -> tuple[dict | None, np.ndarray]:
        """A first-batch draw: its parameters (None: the sampler does not learn from it) and genome."""
        genome = random_genome(self.rng, self.n_blocks, head=self.head)
        return dict(zip(self._names, genome)), genome

    def _genome(self, params: dict) -> np.ndarray:
        return np.array([params[n] for n in self._names])

    def _warm(self, genome: np.ndarray) -> dict | None:
        """The parameters of a warm-start genome, or None when the space cannot hold it."""
        return dict(zip(self._names, genome))

    def _enqueue(self, params: dict | None) -> None:
        if params is not None:
            self.study.enqueue_trial(params)
            self._trials.append(self.study.ask(self._distributions))
        else:
            self._trials.append(None)

    def ask(self) -> list[Candidate]:
        if self._pending is None and self.generation == -1:
            # The warm start: enqueued and asked first (Optuna's queue is first in, first out), so
            # the trials stay in slot order and the sampler learns from these runs like any other.
            for genome in self.initial:
                self._enqueue(self._warm(genome))
        return super().ask()

    def _draw(self, generation: int, slot: int) -> np.ndarray:
        if generation == 0:
            params, genome = self._prior()
            self._enqueue(params)
            return genome
        for _ in range(_MAX_REDRAWS):
            trial = self.study.ask(self._distributions)
            genome = self._genome(trial.params)
            if is_valid(genome, head=self.head):
                self._trials.append(trial)
                return genome
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        raise BioTuneError(f"{type(self).__name__} proposed {_MAX_REDRAWS} invalid genomes in a row")

    def _learn(self, fitness: np.ndarray) -> None:
        for trial, value in zip(self._trials, fitness):
            if trial is not None:
                self.study.tell(trial, float(value))
        self._trials = []


class TPESearch(OptunaSearch):
    """Optuna's TPE over the genome space. Optuna's default of 10 random start-up trials would make
    TPE random search on small budgets, hence none: the prior's first batch is its start-up."""

    def _sampler(self):
        return self._optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=0)


class CmaEsSearch(OptunaSearch):
    """CMA-ES (Optuna's ``CmaEsSampler``, which needs the ``cmaes`` package) over the genome space.

    The first batch is the prior's, like TPE's; CMA-ES then starts at the best genome found so far
    with a step size of :attr:`SIGMA0` (a fifth of a gene's range) and spends one CMA generation per
    later batch (its population size is the batch's). It is built after the first batch is told, so
    a resume rebuilds it the same way.
    """

    SIGMA0 = 0.2

    def _sampler(self):
        return self._optuna.samplers.RandomSampler(seed=self.seed)  # replaced after the first batch

    def _draw(self, generation: int, slot: int) -> np.ndarray:
        if generation >= 1 and not isinstance(self.study.sampler, self._optuna.samplers.CmaEsSampler):
            if importlib.util.find_spec("cmaes") is None:  # Optuna imports it lazily: fail here, with the fix
                raise BioTuneError("--strategy cmaes needs the `cmaes` package: pip install 'biotune[cmaes]'")
            with warnings.catch_warnings():
                # Optuna 4.9 deprecated x0 and sigma0 (removal planned for 6.0); their replacement,
                # source_trials (WS-CMA-ES), needs 10 or more finished trials, more than a first batch.
                warnings.simplefilter("ignore", FutureWarning)
                self.study.sampler = self._optuna.samplers.CmaEsSampler(
                    x0=dict(zip(self._names, self._best[1])), sigma0=self.SIGMA0, n_startup_trials=0, seed=self.seed,
                    popsize=max(self.batches[1:]), warn_independent_sampling=False)
        return super()._draw(generation, slot)


class StructuredSearch(OptunaSearch):
    """TPE over four numbers instead of one gene per block (after Quick-Tune's space, Arango et
    al. 2024): the share of leading blocks frozen, the learning-rate multiplier of the last
    body block, a layer-wise decay of that rate towards the input, and the head's multiplier.

    Each proposal maps to a genome of the paper's space (:func:`structured_genome`), so decoding,
    training, the study and the final phase are the genome search's. The first batch is drawn
    uniformly in the four numbers. Warm-start genomes are evaluated but not told to the sampler
    (they need not lie in this space).
    """

    #: The four numbers and their ranges: freeze share, body and head genes (multipliers
    #: 10^(2(ν − 0.5)), 0.1–10), per-block decay of the body's rate.
    RANGES = {"freeze": (0.0, 1.0), "body": (0.0, 1.0), "decay": (0.5, 1.0), "head": (0.0, 1.0)}

    def _sampler(self):
        return self._optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=0)

    def _space(self) -> dict:
        return {n: self._optuna.distributions.FloatDistribution(lo, hi) for n, (lo, hi) in self.RANGES.items()}

    def _prior(self) -> tuple[dict | None, np.ndarray]:
        params = {n: float(lo + (hi - lo) * self.rng.random()) for n, (lo, hi) in self.RANGES.items()}
        return params, self._genome(params)

    def _genome(self, params: dict) -> np.ndarray:
        return structured_genome(self.n_blocks, **params)

    def _warm(self, genome: np.ndarray) -> dict | None:
        return None


def structured_genome(n_blocks: int, freeze: float, body: float, decay: float, head: float) -> np.ndarray:
    """The genome of a structured configuration (:class:`StructuredSearch`): the first
    ``floor(freeze · n_blocks)`` blocks frozen (never the head, the last block), the last body block
    at gene ``body``, each block below it at ``decay`` times the rate of the one above, the head at
    gene ``head``. Genes are kept at least :data:`_MIN_GENE` so that a trainable block stays above
    the threshold (half the smallest trainable gene; 0 when nothing is frozen).

    Example:
        >>> structured_genome(4, freeze=0.5, body=0.5, decay=0.1 ** 0.5, head=1.0).round(3).tolist()
        [0.0, 0.0, 0.5, 1.0, 0.25]
    """
    frozen = min(n_blocks - 1, int(np.floor(freeze * n_blocks)))
    depth = np.arange(n_blocks - 1)[::-1]  # 0 for the last body block, growing towards the input
    genes = np.append(body + depth * np.log10(decay) / 2.0, head)
    genes = np.clip(genes, _MIN_GENE, 1.0)
    genes[:frozen] = 0.0
    threshold = genes[frozen:].min() / 2.0 if frozen else 0.0
    return np.append(genes, threshold)


_MIN_GENE = 0.02  # multiplier 0.11: a trainable block never sits on a frozen block's gene (0)


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


@STRATEGIES.register("cmaes", "CMA-ES (Optuna's sampler; needs the `cmaes` package) over the paper's genome space, "
                              "started at the first batch's best")
def _cmaes(n_blocks: int, search: SearchConfig, *, seed: int, rng, head: bool, initial) -> CmaEsSearch:
    batches = batch_sizes(search.population, search.elites, search.generations)
    return CmaEsSearch(n_blocks, batches, rng=rng, seed=seed, head=head, initial=initial)


@STRATEGIES.register("structured", "TPE over 4 numbers (Quick-Tune's space): leading blocks frozen, the body's "
                                   "rate, its layer-wise decay, the head's rate")
def _structured(n_blocks: int, search: SearchConfig, *, seed: int, rng, head: bool, initial) -> StructuredSearch:
    batches = batch_sizes(search.population, search.elites, search.generations)
    return StructuredSearch(n_blocks, batches, rng=rng, seed=seed, head=head, initial=initial)


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
