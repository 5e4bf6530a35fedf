"""Search quality: noise-aware fitness, the strategies' shared prior, robust operators, top-k
selection on validation. Stub executors give known numbers; no model is trained here."""

from __future__ import annotations

import numpy as np
import pytest

from biotune.config import SearchConfig
from biotune.models.blocks import Block
from biotune.search.engines import RandomSearch, TPESearch, make_engine
from biotune.search.evolution import MemeticEvolution, batch_sizes, perturb_variant, uniform_crossover
from biotune.search.final import select_final
from biotune.search.fitness import FitnessEvaluator, replicate_seeds
from biotune.search.genome import decode, is_valid, repair, trainable_mask
from biotune.search.loop import run_search
from biotune.search.study import TrialStore, gene_names
from biotune.training.executor import Executor
from biotune.training.session import RunOutcome


class StubExecutor(Executor):
    """Accuracy from a function of (lrs, fold, seed); records every request it trains."""

    def __init__(self, accuracy):
        self.accuracy = accuracy
        self.requests = []

    def run(self, requests, on_result, on_epoch=None, may_start=None):
        for i, r in enumerate(requests):
            self.requests.append(r)
            acc = self.accuracy(r)
            test = None if r.fold is not None else acc - 0.05
            on_result(i, RunOutcome(acc, 1, 2, 0.1, False, test_accuracy=test, train_images=100))


def _noisy(request):
    """A smooth objective (few trainable blocks with high LR is best) plus per-seed noise."""
    lrs = np.asarray(request.lrs)
    signal = 0.5 + 0.1 * np.tanh(np.log10(lrs[-1] / 1e-3 + 1e-9)) - 0.05 * (lrs > 0).mean()
    noise = np.random.default_rng([request.seed, 0 if request.fold is None else request.fold + 1]).normal(0, 0.05)
    return float(np.clip(signal + noise, 0.0, 1.0))


def test_re_scoring_adds_evidence_and_fitness_is_the_mean_of_all_runs():
    ex = StubExecutor(_noisy)
    ev = FitnessEvaluator(ex, 2, (11, 12), 1e-3, "ctx")
    genome = np.array([0.9, 0.2, 0.7, 0.5])
    first = ev.evaluate(genome, 0)
    again = ev.evaluate(genome, 0)  # same fold again: the next replicate of seeds, not the memo
    other = ev.evaluate(genome, 1)
    assert first.seeds == (11, 12) and again.seeds == replicate_seeds((11, 12), 1) != first.seeds
    assert again.trained == 2 and len(ex.requests) == 6
    accs = [*first.accuracies, *again.accuracies, *other.accuracies]
    fitness, runs = ev.estimate(genome)
    assert runs == 6 and fitness == pytest.approx(1 - np.mean(accs))
    # an equal configuration (same mask and LRs, other genes) shares the evidence
    same = genome.copy()
    same[1] = 0.3  # still frozen (below the threshold 0.5)
    assert decode(same, 1e-3).key() == decode(genome, 1e-3).key()
    assert ev.estimate(same) == (fitness, runs)
    # asking explicitly for known seeds is answered from the memo
    assert ev.evaluate(genome, 0, seeds=(11, 12)).trained == 0


def test_every_strategy_draws_the_same_valid_first_batch_and_spends_the_same_budget():
    search = SearchConfig(population=6, elites=2, generations=2, seeds=1)
    firsts, sizes = {}, {}
    for strategy in ("robust", "memetic", "random", "tpe"):
        engine = make_engine(strategy, 5, search, seed=3)
        asked = []
        while not engine.done:
            batch = engine.ask()
            asked.append(len(batch))
            for c in batch:
                assert is_valid(c.array) and ((0 <= c.array) & (c.array <= 1)).all()
            engine.tell([float(((c.array - 0.3) ** 2).sum()) for c in batch])
            if strategy not in firsts:
                firsts[strategy] = [c.genes for c in batch]
        sizes[strategy] = asked
    assert all(f == firsts["memetic"] for f in firsts.values())  # one prior, one seed: one first batch
    assert all(s == list(batch_sizes(6, 2, 2)) for s in sizes.values())
    assert isinstance(make_engine("random", 5, search, 3), RandomSearch)
    assert isinstance(make_engine("tpe", 5, search, 3), TPESearch)


def test_head_repair_reflects_a_frozen_head_gene_onto_the_trainable_range_uniformly():
    rng = np.random.default_rng(1)
    threshold = 0.4
    genomes = np.column_stack([rng.random(4000), rng.uniform(0, threshold, 4000), np.full(4000, threshold)])
    repaired = np.array([repair(g, head=True) for g in genomes])
    assert (repaired[:, 1] > threshold).all() and (repaired[:, [0, 2]] == genomes[:, [0, 2]]).all()
    # U[0, ε_f] maps onto U[ε_f, 1]: mean (1 + ε_f)/2, spread over the whole range
    assert repaired[:, 1].mean() == pytest.approx((1 + threshold) / 2, abs=0.01)
    assert repaired[:, 1].min() < threshold + 0.01 and repaired[:, 1].max() > 0.99
    # a genome that trains the head is left alone; edge cases stay in [0, 1] and valid
    ok = np.array([0.1, 0.9, 0.5])
    assert (repair(ok, head=True) == ok).all()
    for edge in ([0.0, 0.0, 0.0], [0.3, 1.0, 1.0], [0.3, 0.5, 0.5]):
        fixed = repair(np.array(edge), head=True)
        assert is_valid(fixed, head=True) and ((0 <= fixed) & (fixed <= 1)).all(), fixed
    assert not is_valid(np.array([0.9, 0.1, 0.5]), head=True) and is_valid(np.array([0.9, 0.1, 0.5]))


@pytest.mark.parametrize("strategy", ["memetic", "robust", "random", "tpe"])
def test_train_head_keeps_the_head_trainable_in_every_asked_genome(strategy):
    search = SearchConfig(population=6, elites=2, generations=3, seeds=1, train_head=True)
    engine = make_engine(strategy, 5, search, seed=4)
    asked = 0
    while not engine.done:
        batch = engine.ask()
        assert all(trainable_mask(c.array)[-1] for c in batch)
        asked += len(batch)
        # reward freezing the head's neighbours and a low head gene: pushes operators toward freezing it
        engine.tell([float(c.array[-2] - c.array[-1]) for c in batch])
    assert asked == sum(batch_sizes(6, 2, 3))
    # off (the paper's space), the same seed draws heads that freeze
    free = make_engine(strategy, 5, SearchConfig(population=6, elites=2, generations=3, seeds=1, warm_start=False),
                       seed=4)
    assert any(not trainable_mask(c.array)[-1] for c in free.ask())


def test_robust_exploitation_can_unfreeze_and_crossover_takes_parents_genes():
    rng = np.random.default_rng(0)
    elite = np.array([0.9, 0.2, 0.3, 0.8, 0.5])  # blocks 1 and 2 frozen (threshold 0.5)
    unfrozen = 0
    for _ in range(300):
        (variant,) = perturb_variant(rng, elite)
        changed = np.flatnonzero(variant != elite)
        assert 1 <= len(changed) <= 3
        unfrozen += bool((trainable_mask(variant) & ~trainable_mask(elite)).any())
    assert unfrozen > 10
    a, b = rng.random(6), rng.random(6)
    child, momentum = uniform_crossover(rng, a, b, np.ones(6), np.ones(6))
    assert all(c in (x, y) for c, x, y in zip(child, a, b)) and not momentum.any()


@pytest.mark.parametrize("strategy", ["robust", "random"])
def test_operators_do_not_drift_toward_training_everything(strategy):
    """On an objective that ignores the genome (pure noise), the trainable share stays at the prior's."""
    shares = []
    for seed in range(8):
        engine = make_engine(strategy, 8, SearchConfig(population=10, elites=3, generations=6), seed)
        noise = np.random.default_rng(seed + 100)
        while not engine.done:
            batch = engine.ask()
            if batch[0].generation == engine.generations:
                shares += [trainable_mask(c.array)[:-1].mean() for c in batch]
            engine.tell(list(noise.random(len(batch))))
    assert 0.35 < np.mean(shares) < 0.65, np.mean(shares)


def test_robust_survival_keeps_the_best_distinct_configurations():
    e = MemeticEvolution(3, population_size=4, n_elites=1, generations=1, rng=np.random.default_rng(0),
                         exploitation=perturb_variant, survival="truncation")
    e.ask()
    e.tell([0.4, 0.1, 0.3, 0.2])
    batch = e.ask()
    assert [c.role for c in batch] == ["elite", "exploit"] + ["offspring"] * 4
    f = np.linspace(0.9, 0.1, len(batch))  # the last asked are the best
    f[1] = f[0]  # the variant ties its elite
    e.tell(list(f))
    assert len(e.population) == 4
    np.testing.assert_allclose(e.fitness, np.sort(f)[:4])
    keys = {decode(g, 1.0).key() for g in e.population}
    assert len(keys) == 4


def test_top_k_selection_chooses_the_best_validation_accuracy_not_test():
    blocks = (Block("a", ("a",), ("a.w",), 10), Block("b", ("b",), ("b.w",), 10), Block("h", ("h",), ("h.w",), 10))
    candidates = [(0.9, 0.9, 0.9, 0.1), (0.2, 0.9, 0.9, 0.5), (0.9, 0.2, 0.8, 0.5)]
    val = {0: 0.70, 1: 0.80, 2: 0.75}
    test = {0: 0.99, 1: 0.60, 2: 0.70}  # the best on test is not the best on validation

    class Known(Executor):
        def __init__(self):
            self.n = 0

        def run(self, requests, on_result, on_epoch=None, may_start=None):
            for i, r in enumerate(requests):
                c = [j for j, g in enumerate(candidates) if decode(np.asarray(g), 1e-3).lrs == r.lrs][0]
                self.n += 1
                on_result(i, RunOutcome(val[c] + 0.001 * r.seed, 1, 1, 0.0, False, test_accuracy=test[c]))

    ex = Known()
    saved = {}
    selection = select_final(ex, candidates, blocks, base_lr=1e-3, seeds=(1, 2),
                             on_run=lambda g, run: saved.setdefault((g, run.seed), run))
    assert ex.n == 6 and selection.chosen == 1 and selection.result.genes == candidates[1]
    assert selection.result.val_accuracy_mean == pytest.approx(0.8015)
    assert selection.selected_by == "validation"
    # resumed with four runs done: only the two missing are trained, the choice is the same
    ex2 = Known()
    done = dict(list(saved.items())[:4])
    again = select_final(ex2, candidates, blocks, base_lr=1e-3, seeds=(1, 2), done=done)
    assert ex2.n == 2 and again.chosen == 1


def test_search_ranks_every_distinct_configuration_by_its_mean_fitness(tmp_path):
    search = SearchConfig(population=4, elites=1, generations=2, seeds=1, fraction=0.5)
    names = gene_names(["a", "b", "c"])
    ex = StubExecutor(_noisy)
    ev = FitnessEvaluator(ex, search.n_folds, (5,), 1e-3, "ctx")
    store = TrialStore(f"sqlite:///{tmp_path / 's.db'}", "s", names, {})
    result = run_search(make_engine("robust", 3, search, 0), ev, store)
    fits = [r.fitness for r in result.ranking]
    assert fits == sorted(fits) and len({decode(np.asarray(r.genes), 1.0).key() for r in result.ranking}) == len(fits)
    for r in result.ranking:
        assert (r.fitness, r.runs) == ev.estimate(np.asarray(r.genes))
    assert result.compute.runs == len(ex.requests) and result.compute.images == 100 * len(ex.requests)
    # a resumed search reads everything back and trains nothing
    ex2 = StubExecutor(_noisy)
    ev2 = FitnessEvaluator(ex2, search.n_folds, (5,), 1e-3, "ctx")
    again = run_search(make_engine("robust", 3, search, 0), ev2, TrialStore(f"sqlite:///{tmp_path / 's.db'}", "s", names, {}))
    assert not ex2.requests and again.ranking == result.ranking


def test_train_head_option_reaches_the_search_config_and_the_paper_preset_lets_the_head_freeze():
    from biotune.cli._options import build_parser, search_config

    def config(*argv):
        return search_config(build_parser().parse_args(["search", *argv])).search

    assert config("--train-head").train_head is True
    assert config("--preset", "paper").train_head is False
    assert config("--preset", "paper", "--train-head").train_head is True  # an option beats the preset
    assert config("--train-head", "--no-train-head").train_head is False
    with pytest.raises(TypeError, match="train_head"):
        SearchConfig(train_head="yes")
