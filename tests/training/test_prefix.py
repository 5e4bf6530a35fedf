"""The frozen-prefix cache is exact: cached and uncached runs agree, and it never cuts where it cannot."""

from __future__ import annotations

import pytest
import torch

from biotune.config import TrainConfig, parse_memory
from biotune.models.blocks import partition_model
from biotune.models.build import build_model
from biotune.training.prefix import bypass
from biotune.training.trainer import FineTuner, TrainerOptions, _rows


def _tuner(name: str, cache_memory: int, *, granularity: str = "stage", checkpointing: bool = False) -> FineTuner:
    pm = build_model(name, 4, weights="random", seed=0)
    blocks = partition_model(pm.model, granularity)
    return FineTuner(pm.model, blocks, TrainConfig(epochs=3, patience=3, batch_size=16), torch.device("cpu"),
                     TrainerOptions(cache_memory=cache_memory, grad_checkpointing=checkpointing))


def _data(n: int = 96, size: int = 32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (n,), generator=g)
    return x, y


@pytest.mark.parametrize(("name", "granularity", "checkpointing"), [
    ("test_efficientnet", "stage", False), ("test_resnet", "stage", False), ("test_resnet", "block", False),
    # timm's checkpointing runs a stage's blocks one by one (checkpoint_seq, flattened), not the stage's forward
    ("test_efficientnet", "stage", True), ("test_efficientnet", "block", True), ("test_resnet", "stage", True)])
def test_cached_run_equals_uncached_run(name, granularity, checkpointing):
    x, y = _data()
    xv, yv = _data(40)
    index = torch.arange(0, len(x), 2)
    cached, plain = (_tuner(name, memory, granularity=granularity, checkpointing=checkpointing) for memory in (2**30, 0))
    n = len(cached.blocks)
    for frozen in (1, n // 2, n - 1):
        lrs = [0.0] * frozen + [1e-3] * (n - frozen)
        a = cached.run(lrs, (x, y), (xv, yv), seed=7, keep_best=True, train_index=index)
        b = plain.run(lrs, (x, y), (xv, yv), seed=7, keep_best=True, train_index=index)
        assert a.prefix_depth == frozen and b.prefix_depth == 0
        assert a.val_accuracies == b.val_accuracies
        assert a.train_losses == pytest.approx(b.train_losses, rel=1e-5, abs=1e-6)
        for key, value in a.best_state.items():
            torch.testing.assert_close(value, b.best_state[key], rtol=1e-4, atol=1e-5, msg=key)


def test_cache_is_shared_between_runs_and_picks_the_deepest_prefix():
    x, y = _data()
    tuner = _tuner("test_efficientnet", 2**30)
    n = len(tuner.blocks)
    mask = [False, False, False, True] + [True] * (n - 4)
    assert tuner.cache.cut_for(mask, x).depth == 3
    lrs = [0.0, 0.0, 0.0] + [1e-3] * (n - 3)
    tuner.run(lrs, (x, y), (x, y), seed=1)
    misses = tuner.cache.misses
    tuner.run(lrs, (x, y), (x, y), seed=2)  # another seed: features come from the cache
    assert tuner.cache.misses == misses and tuner.cache.hits >= 2


def test_prefix_cut_refused_where_the_forward_is_not_a_chain():
    """ViT adds its position embedding outside any module: no depth is exact, runs go uncached."""
    x, y = _data(16)
    tuner = _tuner("test_vit", 2**30)
    n = len(tuner.blocks)
    assert all(tuner.cache.cut_at(k, x) is None for k in range(1, n))
    result = tuner.run([0.0] * (n - 1) + [1e-3], (x, y), (x, y), seed=0)
    assert result.prefix_depth == 0 and result.epochs_run >= 1


def test_budget_bounds_the_cache():
    x, y = _data()
    tuner = _tuner("test_efficientnet", 2**30)
    cut = tuner.cache.cut_at(1, x)
    one = tuner.cache.features(cut, x)
    size = one.numel() * one.element_size()
    tuner.cache.clear()
    tuner.cache.memory = size - 1  # too small for this depth: not cached, run trains uncached
    assert tuner.cache.features(cut, x) is None
    n = len(tuner.blocks)
    assert tuner.run([0.0] + [1e-3] * (n - 1), (x, y), (x, y), seed=0).prefix_depth == 0
    tuner.cache.memory = size + 1  # room for one depth: the older one is evicted
    tuner.cache.features(cut, x)
    tuner.cache.features(tuner.cache.cut_at(2, x), x)
    assert tuner.cache.bytes_used <= tuner.cache.memory and len(tuner.cache._store) == 1


def test_bypass_restores_the_model():
    tuner = _tuner("test_resnet", 2**30)
    x, _ = _data(4)
    model = tuner.model.eval()
    before = model(x)
    keys = set(model.state_dict())
    cut = tuner.cache.cut_at(2, x)
    with bypass(model, cut):
        assert set(model.state_dict()) == keys
    assert all("forward" not in m.__dict__ for m in model.modules())
    torch.testing.assert_close(model(x), before)


def test_a_cut_traced_without_checkpointing_holds_with_it():
    """The plan times frozen-prefix runs on a copy with checkpointing on (a memory limit chose it) with
    cuts the cache traced on the model without: the stage's blocks must be bypassed too."""
    tuner = _tuner("test_efficientnet", 2**30)
    x, _ = _data(4)
    model = tuner.model.eval()
    before = model(x)
    cut = tuner.cache.cut_at(3, x)
    assert any(name.count(".") == 1 for name in cut.bypassed)  # a whole stage (blocks.N) is bypassed
    features = tuner.cache.features(cut, x)
    model.set_grad_checkpointing(True)
    with bypass(model, cut):
        torch.testing.assert_close(model(features), before)


@pytest.mark.parametrize(("text", "expected"), [("2G", 2**31), ("512M", 2**29), ("0", 0), ("1.5k", 1536), (10, 10)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1G", "2T"])
def test_parse_memory_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_memory(text)


def test_disk_tier_is_exact_and_reused(tmp_path):
    x, y = _data()
    xv, yv = _data(40)
    pm_blocks = _tuner("test_efficientnet", 0)
    n = len(pm_blocks.blocks)
    lrs = [0.0] * 3 + [1e-3] * (n - 3)
    expected = pm_blocks.run(lrs, (x, y), (xv, yv), seed=4)

    def disk_tuner():
        pm = build_model("test_efficientnet", 4, weights="random", seed=0)
        return FineTuner(pm.model, partition_model(pm.model), pm_blocks.config, torch.device("cpu"),
                         TrainerOptions(cache_memory=1, cache_dir=tmp_path, cache_namespace="t"))

    first = disk_tuner()
    got = first.run(lrs, (x, y), (xv, yv), seed=4)
    assert got.prefix_depth == 3 and first.cache.bytes_used == 0  # nothing held in memory
    assert got.val_accuracies == expected.val_accuracies
    assert got.train_losses == pytest.approx(expected.train_losses, rel=1e-5, abs=1e-6)
    files = sorted(p.name for p in tmp_path.glob("t-depth3-*.npy"))
    assert len(files) == 2  # training and validation images
    second = disk_tuner()  # e.g. another worker process or a resumed run
    again = second.run(lrs, (x, y), (xv, yv), seed=4)
    assert second.cache.misses == 0 and again.val_accuracies == expected.val_accuracies


def test_a_fold_of_cached_features_is_gathered_per_batch_and_filled_at_the_evaluation_batch():
    """A fold is read from the cache entry batch by batch (no fold-sized copy beside the entry), and the
    entry is filled in passes of the evaluation's batch, which the memory plan bounds."""
    x, y = _data()
    index = torch.arange(0, len(x), 3)
    rows = _rows(x, index, torch.device("cpu"))
    assert len(rows) == len(index) and rows.base.data_ptr() == x.data_ptr()
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))[:10]
    assert torch.equal(rows[order], x[index][order])

    pm = build_model("test_efficientnet", 4, weights="random", seed=0)
    tuner = FineTuner(pm.model, partition_model(pm.model), TrainConfig(epochs=1, batch_size=16), torch.device("cpu"),
                      TrainerOptions(cache_memory=2**30, eval_batch_size=8))
    seen = []
    capture = tuner.cache._capture
    tuner.cache._capture = lambda cut, xb: seen.append(len(xb)) or capture(cut, xb)
    n = len(tuner.blocks)
    result = tuner.run([0.0] * 3 + [1e-3] * (n - 3), (x, y), (x[:40], y[:40]), seed=0, train_index=index)
    assert result.prefix_depth == 3 and max(seen) == 8 and sum(seen) >= len(x) + 40
