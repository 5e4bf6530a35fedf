"""Baselines on the shared trainer: each method's defining property on a tiny model."""

from __future__ import annotations

import pytest
import torch

from biotune.compare.baselines import (BASELINES, DEFAULT_KNOBS, Knobs, SPPenalty, baseline_plan, default_knobs,
                                      gradual_masks, mean_trainable_share)
from biotune.config import TrainConfig
from biotune.errors import BioTuneError
from biotune.models.blocks import partition_model
from biotune.models.build import build_model
from biotune.training.trainer import FineTuner, TrainerOptions


def _tuner(epochs: int = 2, patience: int = 2) -> FineTuner:
    pm = build_model("test_efficientnet", 3, weights="random", seed=0)
    return FineTuner(pm.model, partition_model(pm.model), TrainConfig(epochs=epochs, patience=patience, batch_size=16),
                     torch.device("cpu"), TrainerOptions(cache_memory=0))


def _data(n: int = 48):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def _changed_blocks(tuner: FineTuner, before: dict, after: dict) -> list[bool]:
    return [any(not torch.equal(before[n], after[n]) for n in b.param_names) for b in tuner.blocks]


def test_lp_changes_only_the_head():
    tuner = _tuner()
    x, y = _data()
    plan = baseline_plan("lp", tuner.model, tuner.blocks, tuner.initial_state, 1e-2, epochs=2)
    result = tuner.run(plan.lrs, (x, y), (x, y), seed=0, keep_best=True)
    start = dict(tuner.initial_state)
    changed = _changed_blocks(tuner, start, result.best_state)
    assert changed == [False] * (len(tuner.blocks) - 1) + [True]
    buffers = [k for k in start if "running_mean" in k]
    assert all(torch.equal(start[k], result.best_state[k]) for k in buffers)  # features stay in eval mode


def test_l2sp_penalty_is_zero_at_w0_and_its_gradient_is_alpha_times_the_distance():
    tuner = _tuner()
    model, blocks = tuner.model, tuner.blocks
    model.load_state_dict(tuner.initial_state)
    penalty = SPPenalty(model, blocks, tuner.initial_state, alpha=0.1, beta=0.0)
    assert penalty(model).item() == 0.0
    params = dict(model.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn_like(p) * 0.01)
    model.zero_grad()
    penalty(model).backward()
    for block in blocks[:-1]:
        for name in block.param_names:
            torch.testing.assert_close(params[name].grad, 0.1 * (params[name] - tuner.initial_state[name]))
    head = SPPenalty(model, blocks, tuner.initial_state, alpha=0.0, beta=0.01)
    model.zero_grad()
    head(model).backward()
    for name in blocks[-1].param_names:
        torch.testing.assert_close(params[name].grad, 0.01 * params[name])


def test_l1sp_gradient_is_alpha_times_the_sign_and_kernels_only_skips_vectors():
    tuner = _tuner()
    model, blocks = tuner.model, tuner.blocks
    params = dict(model.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn_like(p) * 0.01)
    penalty = SPPenalty(model, blocks, tuner.initial_state, alpha=0.5, beta=0.0, norm="l1", kernels_only=True)
    model.zero_grad()
    penalty(model).backward()
    for block in blocks[:-1]:
        for name in block.param_names:
            p = params[name]
            expected = 0.5 * torch.sign(p - tuner.initial_state[name]) if p.dim() >= 2 else torch.zeros_like(p)
            got = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(got, expected)


def test_l2sp_keeps_weights_closer_to_w0_than_ft():
    x, y = _data()
    distance = {}
    for method, alpha in (("ft", 0.0), ("l2sp", 50.0)):
        tuner = _tuner(epochs=3, patience=3)
        plan = baseline_plan(method, tuner.model, tuner.blocks, tuner.initial_state, 1e-2, Knobs(alpha=alpha),
                             epochs=3)
        result = tuner.run(plan.lrs, (x, y), (x, y), seed=0, keep_best=True, regime=plan.regime)
        backbone = [n for b in tuner.blocks[:-1] for n in b.param_names]
        distance[method] = sum(float((result.best_state[n] - tuner.initial_state[n]).pow(2).sum()) for n in backbone)
    assert distance["l2sp"] < distance["ft"]


@pytest.mark.parametrize("order", ["glf", "gfl"])
def test_gradual_unfreezing_trains_the_scheduled_blocks_each_epoch(order):
    tuner = _tuner(epochs=9, patience=1)
    x, y = _data()
    plan = baseline_plan(order, tuner.model, tuner.blocks, tuner.initial_state, 1e-2, epochs=9)
    snapshots = [{k: v.clone() for k, v in tuner.initial_state.items()}]

    def record(epoch, acc, loss):
        snapshots.append({k: v.detach().clone() for k, v in tuner.model.state_dict().items()})

    result = tuner.run(plan.lrs, (x, y), (x, y), seed=0, on_epoch=record, regime=plan.regime)
    masks = plan.regime.masks
    assert result.epochs_run >= len(masks)  # no early stop before every block is unfrozen
    # Epoch 1 starts from the restored model with a freshly seeded head: compare from epoch 2 on.
    for epoch in range(2, result.epochs_run + 1):
        expected = list(masks[min(epoch, len(masks)) - 1])
        assert _changed_blocks(tuner, snapshots[epoch - 1], snapshots[epoch]) == expected, epoch


def test_unknown_baseline_and_order():
    tuner = _tuner()
    with pytest.raises(BioTuneError, match="unknown baseline 'foo'"):
        baseline_plan("foo", tuner.model, tuner.blocks, tuner.initial_state, 1e-3, epochs=2)
    with pytest.raises(BioTuneError, match="order"):
        gradual_masks(3, "middle", 4)
    with pytest.raises(BioTuneError, match="pace"):
        gradual_masks(3, "glf", 4, pace=0.0)


def test_autorgn_multipliers_are_in_0_1_with_max_1_each_epoch():
    tuner = _tuner(epochs=3, patience=3)
    x, y = _data(96)
    plan = baseline_plan("autorgn", tuner.model, tuner.blocks, tuner.initial_state, 1e-3, Knobs(), epochs=3)
    result = tuner.run(plan.lrs, (x, y), (x, y), seed=0, regime=plan.regime)
    assert len(result.lr_multipliers) == result.epochs_run == 3
    n_tensors = sum(1 for _ in tuner.model.parameters())
    for mults in result.lr_multipliers:
        assert len(mults) == n_tensors
        assert all(0.0 < m <= 1.0 for m in mults.values()) and max(mults.values()) == 1.0
    assert len({round(m, 6) for m in result.lr_multipliers[0].values()}) > 3  # tensors really differ
    ft = _tuner(epochs=3, patience=3).run(plan.lrs, (x, y), (x, y), seed=0)  # same rates, no rescaling
    assert ft.train_losses[1:] != result.train_losses[1:]  # the multipliers change the updates


def test_rgn_multipliers_on_known_numbers():
    from biotune.training.regime import rgn_multipliers

    got = rgn_multipliers({"a": 2.0, "b": 1.0, "zero_weight": float("inf"), "zero_grad": 0.0})
    assert got == {"a": 1.0, "b": 0.5, "zero_weight": 1.0, "zero_grad": 1e-12}


def test_lora_trains_adapters_norms_and_head_but_leaves_base_weights_unchanged():
    from biotune.compare.baselines import lora_model

    pm = build_model("test_efficientnet", 3, weights="random", seed=0)
    full = sum(p.numel() for p in pm.model.parameters())
    lora = lora_model(pm.model, partition_model(pm.model), rank=4, alpha=8)
    assert lora.excluded and all("conv_dw" in n for n in lora.excluded)  # depthwise: grouped convolutions
    frozen, tuned, adapters = lora.blocks
    assert all(".lora_" in n for n in adapters.param_names) and any("bn" in n for n in tuned.param_names)
    assert not any(".lora_" in n for n in tuned.param_names + frozen.param_names)
    assert tuned.num_params + adapters.num_params < full
    conv = next(m for m in lora.model.modules() if hasattr(m, "scaling") and m.scaling)
    assert conv.scaling["default"] == pytest.approx(2.0)  # alpha / rank
    lrs = lora.lrs(1e-3, Knobs(lr_scale=10.0))
    assert lrs == pytest.approx((0.0, 1e-3, 1e-2))  # frozen; norms and head at λ; adapters at 10 λ
    tuner = FineTuner(lora.model, lora.blocks, TrainConfig(epochs=2, patience=2, batch_size=16), torch.device("cpu"),
                      TrainerOptions(cache_memory=0))
    x, y = _data()
    result = tuner.run(list(lrs), (x, y), (x, y), seed=0, keep_best=True)
    start = tuner.initial_state
    assert all(torch.equal(start[n], result.best_state[n]) for n in frozen.param_names)
    assert any(not torch.equal(start[n], result.best_state[n]) for n in adapters.param_names if "lora_B" in n)


@pytest.mark.parametrize("n_blocks", [2, 5, 10, 17])
def test_gradual_unfreezing_reaches_every_block_before_the_last_third_for_budgets_2_to_30(n_blocks):
    for epochs in range(2, 31):
        for order in ("glf", "gfl"):
            masks = gradual_masks(n_blocks, order, epochs)
            assert masks[0] == (False,) * (n_blocks - 1) + (True,)  # the head alone first
            assert masks[-1] == (True,) * n_blocks, (order, epochs)
            # every block trains from epoch len(masks) on (1-based), the last third being epochs > 2E/3
            assert len(masks) - 1 <= 2 * epochs // 3, (order, epochs)
            unfrozen = [sum(m[:-1]) for m in masks]
            assert unfrozen == sorted(unfrozen) and unfrozen[1] >= 1  # unfreezing starts in epoch 2, never goes back
    assert gradual_masks(5, "glf", 1) == ((True,) * 5,)


def test_mean_trainable_share_averages_the_epochs_run():
    assert mean_trainable_share([10.0, 50.0, 100.0], 5) == pytest.approx((10 + 50 + 100 * 3) / 5)
    assert mean_trainable_share([10.0, 50.0, 100.0], 2) == pytest.approx(30.0)


def test_every_baseline_has_defaults_and_their_provenance_is_written_down():
    assert set(DEFAULT_KNOBS) == set(BASELINES)
    doc = default_knobs.__doc__
    for method in BASELINES:
        assert f"``{method}``" in doc, method
    assert DEFAULT_KNOBS["l1sp"].alpha < 1e-3  # the pull per weight stays below the cross-entropy gradient
    assert DEFAULT_KNOBS["autorgn"].lr_scale > 1 and DEFAULT_KNOBS["lora"].lr_scale > 1
