"""Search ablations: same budget, folds and seeds as the memetic search, proposals from Optuna."""

from __future__ import annotations

import numpy as np
import pytest

from biotune.ablation import batch_sizes, sampler_search
from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from biotune.errors import BioTuneError
from biotune.executor import LocalExecutor
from biotune.fitness import FitnessEvaluator
from biotune.genome import is_valid
from biotune.session import Session, SessionSpec


@pytest.fixture(scope="module")
def session():
    spec = SessionSpec(ModelConfig(name="test_efficientnet", weights="random"), DataConfig(image_size=16),
                       TrainConfig(epochs=1, patience=1, batch_size=64), 2, 0, RuntimeConfig())
    return Session.from_spec(spec)


def _evaluator(session):
    return FitnessEvaluator(LocalExecutor(session), 2, (11,), 1e-3, session.context)


def test_batch_sizes_match_the_memetic_schedule():
    assert batch_sizes(6, 2, 2) == (6, 10, 10)


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_sampler_search_uses_the_same_budget_and_folds_and_is_seeded(session, kind):
    batches = (4, 5)
    first = sampler_search(kind, _evaluator(session), len(session.blocks), batches, seed=3)
    assert [fold for _, fold, _, _ in first.history] == [0] * 4 + [1] * 5
    assert all(is_valid(np.array(genes)) for _, _, genes, _ in first.history)
    assert first.best_fitness == min(e.fitness for *_, e in first.history)
    again = sampler_search(kind, _evaluator(session), len(session.blocks), batches, seed=3)
    assert again.best_genes == first.best_genes and again.best_fitness == first.best_fitness


def test_unknown_sampler(session):
    with pytest.raises(BioTuneError, match="unknown search ablation"):
        sampler_search("grid", _evaluator(session), len(session.blocks), (2,), seed=0)


def test_tpe_departs_from_random_after_the_first_batch(session):
    batches = (3, 4)
    rand = sampler_search("random", _evaluator(session), len(session.blocks), batches, seed=5)
    tpe = sampler_search("tpe", _evaluator(session), len(session.blocks), batches, seed=5)
    assert [g for _, _, g, _ in rand.history[3:]] != [g for _, _, g, _ in tpe.history[3:]]
