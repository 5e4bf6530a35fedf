import numpy as np
import pytest

from biotune.errors import BioTuneError
from biotune.search.genome import (
    check_genome,
    decode,
    full_finetune_genome,
    importance_weights,
    is_valid,
    learning_rates,
    random_genome,
    repair,
    trainable_mask,
)


def test_importance_weight_hand_values():
    np.testing.assert_allclose(importance_weights([0.0, 0.25, 0.5, 0.75, 1.0]), [0.1, 10 ** -0.5, 1.0, 10 ** 0.5, 10.0])


def test_mask_and_learning_rates_hand_computed():
    genome = np.array([0.2, 0.6, 1.0, 0.5, 0.5])  # threshold 0.5: only strictly greater trains
    assert trainable_mask(genome).tolist() == [False, True, True, False]
    lrs = learning_rates(genome, 1e-3)
    np.testing.assert_allclose(lrs, [0.0, 1e-3 * 10 ** 0.2, 1e-2, 0.0])


def test_decode_record():
    d = decode(np.array([0.9, 0.1, 0.3]), 2e-3)
    assert d.mask == (True, False)
    assert d.threshold == 0.3
    np.testing.assert_allclose(d.weights, [10 ** 0.8, 10 ** -0.8])
    np.testing.assert_allclose(d.multipliers, [10 ** 0.8, 0.0])
    np.testing.assert_allclose(d.lrs, [2e-3 * 10 ** 0.8, 0.0])


def test_all_frozen_is_invalid_and_refused():
    genome = np.array([0.1, 0.2, 0.9])
    assert not is_valid(genome)
    with pytest.raises(BioTuneError, match="freezes every block"):
        decode(genome, 1e-3)


def test_repair_unfreezes_largest_gene_minimally():
    fixed = repair(np.array([0.1, 0.4, 0.2, 0.9]))
    assert trainable_mask(fixed).tolist() == [False, True, False]
    np.testing.assert_allclose(fixed[:3], [0.1, 0.4, 0.2])
    assert fixed[3] < 0.4 and fixed[3] > 0.4 - 1e-5
    zeros = repair(np.zeros(3))
    assert is_valid(zeros) and zeros.min() >= 0.0
    valid = np.array([0.7, 0.2, 0.5])
    assert np.array_equal(repair(valid), valid)


def test_random_genome_is_valid_and_seeded():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(50):
        a, b = random_genome(rng_a, 4), random_genome(rng_b, 4)
        assert np.array_equal(a, b) and is_valid(a) and a.shape == (5,)
        assert 0.0 <= a.min() and a.max() <= 1.0


def test_full_finetune_genome_is_all_trainable_at_one():
    d = decode(full_finetune_genome(6), 1e-3)
    assert all(d.mask)
    np.testing.assert_allclose(d.lrs, [1e-3] * 6)


@pytest.mark.parametrize("bad", [[0.5], [0.2, 1.5], [np.nan, 0.1], [[0.1, 0.2]]])
def test_check_genome_rejects_malformed(bad):
    with pytest.raises(BioTuneError):
        check_genome(bad)


def test_check_genome_length():
    with pytest.raises(BioTuneError, match="3 blocks has 4 genes"):
        check_genome([0.1, 0.2, 0.3], n_blocks=3)
