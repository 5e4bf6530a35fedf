"""The practitioners' competitors (ftlr, llrd, lpft), compute accounting and balanced accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from biotune.cli import main
from biotune.compare.baselines import BASELINES, default_knobs
from biotune.compare.tuned import baseline_grid, decay_grid, llrd_multipliers, lpft, lr_grid, tune
from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from biotune.training.metrics import score
from biotune.training.session import RunOutcome, Session
from biotune.training.trainer import FineTuner


def test_ftlr_chooses_the_grid_value_with_the_best_mean_validation_accuracy():
    known = {1e-4: [0.50, 0.52], 1e-3: [0.71, 0.69], 1e-2: [0.80, 0.40]}  # 1e-2 has the best run, not the best mean
    seen = []

    def run(lr, fold, seed):
        seen.append((lr, fold, seed))
        return RunOutcome(known[lr][len([s for s in seen if s[0] == lr]) - 1], 1, 2, 0.1, False, train_images=50)

    tuning = tune(run, (1e-4, 1e-3, 1e-2), budget=7, n_folds=2, seeds=(11, 12, 13))
    assert tuning.chosen == 1e-3 and tuning.replicates == 2  # 7 runs // 3 values
    assert tuning.val_accuracy == pytest.approx((0.51, 0.70, 0.60))
    # every value sees the same (fold, seed) pairs: a paired comparison
    assert {lr: [(f, s) for v, f, s in seen if v == lr] for lr in known} == {lr: [(0, 11), (1, 12)] for lr in known}
    assert tuning.compute.runs == 6 and tuning.compute.images == 300


def test_grids_and_layer_decay_multipliers():
    assert len(lr_grid(26)) == 7 and lr_grid(26)[0] == pytest.approx(1e-4) and lr_grid(26)[-1] == pytest.approx(1e-2)
    assert lr_grid(26)[3] == pytest.approx(1e-3) and lr_grid(3) == pytest.approx((1e-4, 1e-3, 1e-2))
    assert decay_grid(26) == (0.5, 0.6, 0.7, 0.8, 0.9) and len(decay_grid(2)) == 2
    m = llrd_multipliers(6, 0.8)
    assert m[-1] == 1.0 and m == pytest.approx(tuple(0.8 ** (5 - b) for b in range(6)))
    with pytest.raises(Exception, match="layer decay"):
        llrd_multipliers(3, 1.5)


def test_balanced_accuracy_equals_scikit_learn_on_an_imbalanced_case():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2, 3], [70, 20, 8, 2])
    p = np.where(rng.random(100) < 0.7, y, rng.integers(0, 4, 100))
    assert score(torch.as_tensor(p), torch.as_tensor(y), "balanced") == pytest.approx(balanced_accuracy_score(y, p),
                                                                                     abs=1e-12)
    assert score(torch.as_tensor(p), torch.as_tensor(y), "top1") == pytest.approx((p == y).mean())


def test_lpft_second_stage_starts_from_the_probed_head(monkeypatch):
    session = Session.prepare(ModelConfig(name="test_efficientnet", weights="random"),
                              DataConfig(dataset="digits", image_size=16), TrainConfig(epochs=3, patience=1, batch_size=64),
                              n_folds=1, seed=0, runtime=RuntimeConfig())
    head = session.blocks[-1].param_names
    runs, starts = [], []
    real_run, real_configure = FineTuner.run, FineTuner._configure

    def run(self, lrs, *args, **kwargs):
        result = real_run(self, lrs, *args, **kwargs)
        runs.append((lrs, kwargs.get("regime"), result))
        return result

    def configure(self, mask):
        if len(starts) == len(runs):  # the first configuration of each run: its starting weights
            starts.append({n: p.detach().clone() for n, p in self.model.named_parameters()})
        return real_configure(self, mask)

    monkeypatch.setattr(FineTuner, "run", run)
    monkeypatch.setattr(FineTuner, "_configure", configure)
    out = lpft(session, 1e-3, seed=5, epochs=3)
    (probe_lrs, _, probe), (ft_lrs, regime, ft) = runs
    assert probe_lrs[:-1] == (0.0,) * (len(probe_lrs) - 1) and all(lr > 0 for lr in ft_lrs)
    assert regime.epochs == max(1, 3 - probe.epochs_run) and out.probe_epochs == probe.epochs_run
    for name in head:  # at the switch the model holds the probe's best head
        assert torch.equal(starts[1][name], probe.best_state[name])
    assert out.compute.runs == 2 and out.compute.epochs == probe.epochs_run + ft.epochs_run


@pytest.mark.slow
def test_compare_runs_the_tuned_methods_with_their_compute(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--datasets", "digits", "--methods", "ft,ftlr,lpft,llrd", "--runs", "1", "--out", str(out),
            "--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "1",
            "--patience", "1", "--population", "3", "--elites", "1", "--generations", "1", "--seeds", "1",
            "--batch-size", "64", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "runs ·" in printed  # the accuracy-vs-compute table is printed
    for name in ("table1_accuracy.md", "table4_compute.md", "compare_cost.png"):
        assert (out / name).is_file(), name
    assert "Metric: top1" in (out / "table1_accuracy.md").read_text()
    records = {r["method"]: r for r in map(json.loads, (out / "runs.jsonl").read_text().splitlines())}
    search_runs = 3 + 5  # population 3, then 3 + 2 x 1 elite: BioTune's search runs at these settings
    for method in ("ftlr", "llrd"):
        r = records[method]
        assert r["search_compute"]["training_runs"] == r["replicates"] * len(r["grid"]) <= search_runs
        assert r["compute"]["training_runs"] == r["search_compute"]["training_runs"] + 1
        assert r["chosen"] == r["grid"][int(np.argmax(r["grid_val_accuracy"]))]
    assert records["lpft"]["compute"]["training_runs"] == 2 and records["ft"]["compute"]["training_runs"] == 1


@pytest.mark.parametrize("method", sorted(BASELINES))
@pytest.mark.parametrize("budget", [1, 3, 8, 26])
def test_baseline_grids_fit_the_budget_and_hold_the_defaults(method, budget):
    grid = baseline_grid(method, budget)
    assert 1 <= len(grid) <= budget and len(set(grid)) == len(grid)
    assert default_knobs(method) in grid or budget == 1 and len(grid) == 1
    replicates = max(1, budget // len(grid))
    assert replicates * len(grid) <= budget  # tuning never trains more runs than ftlr


@pytest.mark.slow
def test_tune_baselines_stays_within_ftlr_compute_labels_cells_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--datasets", "digits", "--runs", "1", "--out", str(out),
            "--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "2",
            "--patience", "1", "--population", "3", "--elites", "1", "--generations", "1", "--seeds", "1",
            "--batch-size", "64", "--no-progress"]
    assert main([*args, "--methods", "l1sp,glf"]) == 0  # the defaults first
    assert main([*args, "--methods", "l1sp,lora", "--tune-baselines"]) == 0
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    by = {(r["method"], r.get("tuned", False)): r for r in records}
    assert set(by) == {("l1sp", False), ("glf", False), ("l1sp", True), ("lora", True)}
    search_runs = 3 + 5  # population 3, then 3 + 2 x 1 elite: BioTune's search, and ftlr's budget, at these settings
    for method in ("l1sp", "lora"):
        r = by[method, True]
        assert r["search_compute"]["training_runs"] == r["replicates"] * len(r["grid"]) <= search_runs
        assert r["compute"]["training_runs"] == r["search_compute"]["training_runs"] + 1
        assert r["knobs"] == r["grid"][int(np.argmax(r["grid_val_accuracy"]))]
    assert by["l1sp", False]["knobs"] == default_knobs("l1sp").to_dict()
    assert 0 < by["glf", False]["trainable_percent"] < 100  # averaged over epochs: the head alone in epoch 1
    table = (out / "table1_accuracy.md").read_text()
    assert "| l1sp (tuned) |" in table and "| lora (tuned) |" in table
    assert main([*args, "--methods", "ft,glf"]) == 0  # with FT: the distance to it and FTx
    assert "Distance to ft" in (out / "table1_accuracy.md").read_text()
    assert "FTx" in (out / "table4_compute.md").read_text()
    before = (out / "runs.jsonl").read_text()
    assert main([*args, "--methods", "l1sp,lora", "--tune-baselines"]) == 0  # finished tuned cells are kept
    assert (out / "runs.jsonl").read_text() == before
