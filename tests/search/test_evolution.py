import json

import numpy as np
import pytest

from biotune.errors import BioTuneError
from biotune.search.evolution import (
    MemeticEvolution,
    adopt,
    crossover,
    exploit_variants,
    extinction,
    mutate,
    rank_select,
)
from biotune.search.genome import is_valid, trainable_mask


def _objective(c):
    return float(((c.array - 0.3) ** 2).sum())


def _run(seed, generations=3, n_blocks=5, objective=_objective):
    e = MemeticEvolution(n_blocks, population_size=6, n_elites=2, generations=generations, rng=np.random.default_rng(seed))
    asked = []
    while not e.done:
        batch = e.ask()
        asked.append(batch)
        e.tell([objective(c) for c in batch])
    return e, asked


def test_extinction_hand_computed():
    f = np.array([0.2, 0.3, 0.5, 0.8])
    # e_i = (f_i + f_min (i/(N-1) - 1)) / f_max
    expected = [(0.2 + 0.2 * (0 - 1)) / 0.8, (0.3 + 0.2 * (1 / 3 - 1)) / 0.8, (0.5 + 0.2 * (2 / 3 - 1)) / 0.8, 1.0]
    np.testing.assert_allclose(extinction(f), expected)
    assert extinction(f)[0] == 0.0
    np.testing.assert_allclose(extinction(np.zeros(3)), [0.0, 0.5, 1.0])


def test_extinction_computed_for_initial_population():
    e = MemeticEvolution(3, population_size=5, n_elites=2, generations=1, rng=np.random.default_rng(0))
    batch = e.ask()
    assert [c.role for c in batch] == ["init"] * 5
    e.tell([0.5, 0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(e.fitness, [0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(e.extinction, extinction(e.fitness))
    assert e.extinction[-1] == 1.0 and e.extinction[0] == 0.0


def test_batch_layout_and_roles():
    e = MemeticEvolution(4, population_size=6, n_elites=2, generations=1, rng=np.random.default_rng(1))
    e.tell([_objective(c) for c in e.ask()])
    batch = e.ask()
    assert [c.role for c in batch] == ["elite"] * 2 + ["exploit"] * 4 + ["offspring"] * 4
    assert [c.slot for c in batch] == list(range(10))
    assert np.array_equal(batch[0].array, e.population[0]) and np.array_equal(batch[1].array, e.population[1])
    assert e.ask() == batch  # asking again returns the pending batch


def test_bounds_validity_and_determinism():
    e1, asked1 = _run(7)
    e2, asked2 = _run(7)
    e3, _ = _run(8)
    for b1, b2 in zip(asked1, asked2):
        for c1, c2 in zip(b1, b2):
            assert c1.genes == c2.genes and c1.role == c2.role
            assert 0.0 <= min(c1.genes) and max(c1.genes) <= 1.0
            assert is_valid(c1.array)
    assert np.array_equal(e1.population, e2.population)
    assert not np.array_equal(e1.population, e3.population)


def test_elites_kept_best_fitness_never_worsens():
    e, _ = _run(3, generations=5)
    bests = [s.best for s in e.history]
    assert all(b2 <= b1 for b1, b2 in zip(bests, bests[1:]))
    assert bests[-1] < bests[0]
    assert np.all(np.diff(e.fitness) >= 0)  # sorted best first


def _after_init(fitnesses):
    e = MemeticEvolution(3, population_size=4, n_elites=1, generations=1, rng=np.random.default_rng(0))
    e.ask()
    e.tell(fitnesses)
    return e


def test_elite_wins_ties_and_better_variant_replaces_it():
    e = _after_init([0.4, 0.3, 0.2, 0.1])
    elite = e.population[0].copy()
    e.ask()
    # slots: elite re-scored, its + and - variants, 3 offspring; the + variant ties the elite
    e.tell([0.2, 0.2, 0.3, 0.9, 0.9, 0.9])
    assert np.array_equal(e.population[0], elite) and e.fitness[0] == 0.2
    e2 = _after_init([0.4, 0.3, 0.2, 0.1])
    batch = e2.ask()
    e2.tell([0.2, 0.9, 0.05, 0.9, 0.9, 0.9])
    assert np.array_equal(e2.population[0], batch[2].array) and e2.fitness[0] == 0.05
    assert len(e2.population) == 4


def test_state_dict_round_trip_continues_identically():
    ref, _ = _run(11, generations=4)
    e = MemeticEvolution(5, population_size=6, n_elites=2, generations=4, rng=np.random.default_rng(11))
    for _ in range(2):
        e.tell([_objective(c) for c in e.ask()])
    e.ask()  # pending batch is part of the state
    state = json.loads(json.dumps(e.state_dict()))
    fresh = MemeticEvolution(5, population_size=6, n_elites=2, generations=4, rng=np.random.default_rng(999))
    fresh.load_state_dict(state)
    while not fresh.done:
        fresh.tell([_objective(c) for c in fresh.ask()])
    assert np.array_equal(fresh.population, ref.population)


def test_rank_selection_is_linear_and_excludes():
    rng = np.random.default_rng(0)
    draws = np.bincount([rank_select(rng, 4) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(draws, [0.4, 0.3, 0.2, 0.1], atol=0.015)
    assert all(rank_select(rng, 3, exclude=(0,)) != 0 for _ in range(200))


def test_crossover_adds_momentum_and_interpolates():
    rng = np.random.default_rng(0)
    a, b = np.zeros(1000), np.ones(1000)
    genes, carried = crossover(rng, a, b, np.zeros(1000), np.zeros(1000))
    assert np.all(carried == 0) and 0 <= genes.min() and genes.max() <= 1 and 0.4 < genes.mean() < 0.6
    genes_m, carried_m = crossover(np.random.default_rng(0), a, a, np.full(1000, 0.1), np.full(1000, 0.1))
    assert np.all(carried_m >= 0) and np.allclose(genes_m, carried_m) and 0.08 < carried_m.mean() < 0.12


def test_mutation_rate_and_size_follow_extinction():
    rng = np.random.default_rng(0)
    d = 10
    genes = np.full(d, 0.5)
    changed = np.mean([np.mean(mutate(rng, genes, 0.0) != genes) for _ in range(2000)])
    assert changed == 0.0  # ē = 0: size 0 even when a gene is drawn (rate 1/D)
    changed = np.array([mutate(rng, genes, 0.5) - genes for _ in range(4000)])
    rate = np.mean(changed != 0)
    assert abs(rate - (0.5 * (1 - 1 / d) + 1 / d)) < 0.02
    assert np.abs(changed).max() <= 0.5


def test_adoption_moves_toward_parents_and_prototype():
    rng = np.random.default_rng(0)
    out = adopt(rng, np.zeros(500), np.ones(500), np.ones(500), np.ones(500))
    assert np.all(out >= 0) and np.all(out <= 1) and out.mean() > 0.2


def test_exploit_variants_touch_one_trainable_gene():
    rng = np.random.default_rng(2)
    elite = np.array([0.9, 0.2, 0.7, 0.5])
    for _ in range(50):
        plus, minus = exploit_variants(rng, elite)
        for v in (plus, minus):
            diff = np.flatnonzero(v[:3] != elite[:3])
            assert len(diff) <= 1 and (len(diff) == 0 or trainable_mask(elite)[diff[0]])
            assert is_valid(v) and v.min() >= 0 and v.max() <= 1
        d_plus, d_minus = plus[:3] - elite[:3], minus[:3] - elite[:3]
        assert np.all(np.abs(d_plus) <= 0.25 + 1e-12) and np.all(np.abs(d_minus) <= 0.25 + 1e-12)


@pytest.mark.parametrize("kw,match", [
    (dict(population_size=5, n_elites=5), r"n_elites.*\[1, population_size=5\)"),
    (dict(population_size=1, n_elites=1), "population_size"),
    (dict(population_size=5, n_elites=1, generations=-1), "generations"),
])
def test_engine_validates_arguments(kw, match):
    with pytest.raises(BioTuneError, match=match):
        MemeticEvolution(3, rng=np.random.default_rng(0), **kw)


def test_engine_requires_generator():
    with pytest.raises(TypeError):
        MemeticEvolution(3, rng=0)


def test_tell_checks_batch():
    e = MemeticEvolution(3, population_size=4, n_elites=1, generations=1, rng=np.random.default_rng(0))
    with pytest.raises(BioTuneError, match="without a pending"):
        e.tell([0.1])
    e.ask()
    with pytest.raises(BioTuneError, match="needs 4"):
        e.tell([0.1])
