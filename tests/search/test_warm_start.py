"""The warm start: a practitioner's baselines inside the genome space open the first batch of
every strategy, decode to what their names say, and stay out of the paper's protocol."""

from __future__ import annotations

import numpy as np
import pytest

from biotune import PRESETS, RunConfig
from biotune.config import SearchConfig
from biotune.errors import BioTuneError
from biotune.search.engines import RandomSearch, make_engine, warm_start
from biotune.search.genome import WARM_START, baseline_genome, decode, gene_for, is_valid, warm_start_genomes

QUICK = RunConfig().replace(**PRESETS["quick"]).replace(search={"warm_start": True}).search  # a first batch of 6


def test_baseline_genomes_decode_to_what_their_names_say():
    assert gene_for(1.0) == 0.5 and gene_for(10.0) == 1.0 and gene_for(0.1) == pytest.approx(0.0)
    named = dict(warm_start_genomes(7, len(WARM_START)))
    assert list(named) == ["FT x4.6", "FT x2.2", "last half x4.6"]
    ft = decode(named["FT x4.6"], 1e-3)
    assert all(ft.mask) and np.allclose(ft.lrs, 1e-3 * 10 ** (2 / 3))  # 4.6e-3: ftlr's grid point
    assert np.allclose(decode(named["FT x2.2"], 1e-3).lrs, 1e-3 * 10 ** (1 / 3))
    half = decode(named["last half x4.6"], 1e-3)
    assert list(half.mask) == [False] * 3 + [True] * 4  # round(7 / 2) = 4 last blocks
    assert np.allclose(half.lrs[3:], 1e-3 * 10 ** (2 / 3)) and not any(half.lrs[:3])
    with pytest.raises(BioTuneError, match="multiplier"):
        gene_for(20.0)
    with pytest.raises(BioTuneError, match="last"):
        baseline_genome(5, 1.0, last=0)


@pytest.mark.parametrize("strategy", ["tpe", "random", "memetic", "robust"])
def test_every_strategy_opens_with_the_same_warm_start_and_keeps_its_batch_size(strategy):
    engine = make_engine(strategy, 6, QUICK, seed=0)
    batch = engine.ask()
    expected = warm_start(QUICK, 6)
    assert [name for name, _ in expected] == ["FT x4.6", "FT x2.2"]  # a third of 6
    assert len(batch) == 6
    for candidate, (_, genome) in zip(batch, expected):
        assert candidate.role == "warm" and np.array_equal(candidate.array, genome)
    rest = batch[len(expected):]
    assert all(c.role != "warm" and is_valid(c.array) for c in rest)
    engine.tell([0.5 - 0.01 * i for i in range(len(batch))])  # the engine learns from the warm runs too
    assert engine.generation == 0 and len(engine.ask()) > 0


def test_tpe_learns_each_warm_run_with_its_own_genome():
    engine = make_engine("tpe", 6, QUICK, seed=1)
    batch = engine.ask()
    fitness = [0.1 * (i + 1) for i in range(len(batch))]
    engine.tell(fitness)
    trials = engine.study.get_trials(deepcopy=False)
    assert len(trials) == len(batch)
    for trial, candidate, value in zip(trials, batch, fitness):
        assert [trial.params[f"g{i:02d}"] for i in range(7)] == list(candidate.genes)
        assert trial.value == value


def test_the_warm_start_only_adds_the_slots_it_takes():
    """The prior's draws fill the other slots in the same order as without a warm start."""
    cold = RandomSearch(6, (6, 6), rng=np.random.default_rng(4)).ask()
    warm = RandomSearch(6, (6, 6), rng=np.random.default_rng(4), initial=[g for _, g in warm_start(QUICK, 6)]).ask()
    assert [c.genes for c in warm[2:]] == [c.genes for c in cold[:4]]


def test_off_by_default_in_the_paper_protocol_and_with_no_warm_start():
    assert not RunConfig().search.warm_start and not RunConfig().replace(**PRESETS["quick"]).search.warm_start
    paper = RunConfig().replace(**PRESETS["paper"]).search
    assert not paper.warm_start and warm_start(paper, 6) == []
    assert all(c.role == "init" for c in make_engine("memetic", 6, paper, seed=0).ask())
    off = SearchConfig(**{**QUICK.to_dict(), "warm_start": False})
    assert all(c.role == "sample" for c in make_engine("tpe", 6, off, seed=0).ask())


def test_a_warm_start_larger_than_a_third_is_refused():
    genomes = [g for _, g in warm_start_genomes(6, 3)]
    with pytest.raises(BioTuneError, match="at most a third"):
        RandomSearch(6, (6, 6), rng=np.random.default_rng(0), initial=genomes)
