"""The promises every registered search strategy keeps (one suite over :data:`STRATEGIES`, as Optuna
tests every sampler): resuming replays the same proposals, proposals are valid genomes, the batches are
the budget's, and ``done`` comes after it. A new strategy registers and inherits these tests."""

from __future__ import annotations

import numpy as np
import pytest

from biotune.config import SearchConfig
from biotune.search import STRATEGIES, batch_sizes, make_engine
from biotune.search.genome import decode, is_valid

N_BLOCKS = 6
SEARCH = SearchConfig(population=6, elites=2, generations=2, seeds=1)


def _fitness(genes: tuple[float, ...]) -> float:
    """A deterministic landscape: best with the first half frozen and the rest at one rate."""
    g = np.asarray(genes)
    return float(np.abs(g[: N_BLOCKS // 2] - 0.2).sum() + np.abs(g[N_BLOCKS // 2: -1] - 0.8).sum()) / N_BLOCKS


def _drive(engine, stop_after: int | None = None) -> list[list[tuple[float, ...]]]:
    """Ask and tell until done (or ``stop_after`` generations); every batch asked, in order."""
    asked = []
    while not engine.done and (stop_after is None or len(asked) < stop_after):
        batch = engine.ask()
        asked.append([c.genes for c in batch])
        engine.tell([_fitness(c.genes) for c in batch])
    return asked


@pytest.fixture(params=tuple(STRATEGIES))
def strategy(request) -> str:
    return request.param


def test_resume_replays_the_same_proposals(strategy):
    whole = _drive(make_engine(strategy, N_BLOCKS, SEARCH, seed=5))
    # A resumed search rebuilds the engine with its seed and replays the stored fitnesses.
    resumed = make_engine(strategy, N_BLOCKS, SEARCH, seed=5)
    replayed = _drive(resumed, stop_after=1)
    rest = _drive(resumed)
    assert replayed + rest == whole
    other_seed = _drive(make_engine(strategy, N_BLOCKS, SEARCH, seed=6))
    assert other_seed != whole  # the seed matters, so the equality above is not vacuous


def test_proposals_decode_to_valid_genomes(strategy):
    for batch in _drive(make_engine(strategy, N_BLOCKS, SEARCH, seed=1)):
        for genes in batch:
            assert len(genes) == N_BLOCKS + 1 and all(0.0 <= g <= 1.0 for g in genes)
            assert is_valid(np.asarray(genes))  # never every block frozen
            assert any(lr > 0 for lr in decode(np.asarray(genes), 1e-3).lrs)


def test_batches_are_the_budget_and_done_comes_after_it(strategy):
    engine = make_engine(strategy, N_BLOCKS, SEARCH, seed=2)
    sizes = [len(b) for b in _drive(engine)]
    assert sizes == list(batch_sizes(SEARCH.population, SEARCH.elites, SEARCH.generations))
    assert engine.done and engine.ask() == []
    assert len(engine.history) == SEARCH.generations + 1
    bests = [s.best for s in engine.history]
    assert bests == sorted(bests, reverse=True)  # the best so far never worsens


def test_the_command_line_offers_every_registered_strategy_with_its_description():
    from biotune.cli import build_parser

    search = build_parser()._subparsers._group_actions[0].choices["search"]
    action = next(a for a in search._actions if "--strategy" in a.option_strings)
    assert tuple(action.choices) == tuple(STRATEGIES)
    for entry in STRATEGIES.entries():
        assert f"{entry.name}: {entry.description}" in action.help


@pytest.mark.parametrize("n_blocks", [2, 5, 17])
def test_a_structured_configuration_maps_to_the_genome_it_describes(n_blocks):
    from biotune.search.engines import structured_genome

    rng = np.random.default_rng(n_blocks)
    for _ in range(200):
        freeze, body, head = rng.random(3)
        decay = 0.5 + 0.5 * rng.random()
        genome = structured_genome(n_blocks, freeze=freeze, body=body, decay=decay, head=head)
        d = decode(genome, 1.0)
        frozen = min(n_blocks - 1, int(freeze * n_blocks))
        assert d.mask == (False,) * frozen + (True,) * (n_blocks - frozen)  # a leading run, never the head
        body_lrs = np.asarray(d.lrs[frozen:-1])
        # Each block's rate is `decay` times the one above it, until the genome's floor of 0.11.
        assert np.all(body_lrs[:-1] <= body_lrs[1:] + 1e-12)
        unclipped = body_lrs[:-1][body_lrs[:-1] > 0.12]
        assert np.allclose(unclipped / body_lrs[1:][body_lrs[:-1] > 0.12], decay)
        if 0.02 <= body and 0.02 <= head:
            assert d.lrs[-1] == pytest.approx(10 ** (2 * (head - 0.5)))
            if frozen < n_blocks - 1:
                assert d.lrs[-2] == pytest.approx(10 ** (2 * (body - 0.5)))


def test_cmaes_without_its_package_names_the_install_line(monkeypatch):
    import importlib.util

    from biotune.errors import BioTuneError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a))
    engine = make_engine("cmaes", N_BLOCKS, SEARCH, seed=0)
    engine.tell([_fitness(c.genes) for c in engine.ask()])  # the first batch is the prior's: no CMA-ES yet
    with pytest.raises(BioTuneError, match=r"pip install 'biotune\[cmaes\]'"):
        engine.ask()
