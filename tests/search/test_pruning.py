"""Multi-fidelity evaluations: Optuna's pruners stop poor search runs early; a pruned evaluation keeps
the fitness it reached, is stored PRUNED with its curve, is read back (never re-trained) on resume,
and the paper's protocol prunes nothing."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from biotune import PRESETS, RunConfig, RuntimeConfig, run
from biotune.cli import main
from biotune.config import TrainConfig
from biotune.errors import BioTuneError
from biotune.models.blocks import partition_model
from biotune.models.build import build_model
from biotune.search.pruning import PruneCheck, Pruner, Reference, expected_saving, fitness_curve
from biotune.training.trainer import FineTuner


def test_the_curve_is_one_minus_the_mean_best_so_far_and_a_pruned_one_ends_where_a_run_stopped():
    assert fitness_curve([[0.5, 0.7, 0.6], [0.3]], [False, False]) == (0.6, 0.5, 0.5)
    assert fitness_curve([[0.5, 0.7, 0.6], [0.3, 0.4]], [False, True]) == pytest.approx((0.6, 0.45))
    assert fitness_curve([[0.5], []], [False, False]) == ()  # a run known only from the memo: no curve


def _references(first_epoch_fitness):
    """Complete 4-epoch evaluations whose curves improve by 0.05 an epoch from the given start."""
    return tuple(Reference(i, tuple(f - 0.05 * e for e in range(4)), False) for i, f in enumerate(first_epoch_fitness))


def test_successive_halving_stops_a_run_outside_the_best_third_at_a_rung_and_lets_a_good_one_on():
    refs = _references([0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    check = PruneCheck("successive-halving", 4, refs, index=6)
    assert check.start()(1, 0.35) is True  # fitness 0.65 at epoch 1: not in the best third of 7
    good = check.start()  # a fresh run
    assert good(1, 0.72) is False  # fitness 0.28: the best at rung 1
    assert good(2, 0.72) is False  # between rungs nothing is judged
    assert good(3, 0.80) is False  # fitness 0.20 at rung 3: still the best
    late = check.start()
    assert late(1, 0.65) is False and late(3, 0.45) is True  # passes rung 1, not rung 3


def test_median_needs_five_complete_evaluations_and_stops_a_run_below_their_median():
    refs = _references([0.3, 0.4, 0.5, 0.6, 0.7])
    assert PruneCheck("median", 4, refs, index=5).start()(1, 0.40) is True  # 0.60 > median 0.5
    assert PruneCheck("median", 4, refs, index=5).start()(1, 0.55) is False
    assert PruneCheck("median", 4, refs[:4], index=5).start()(1, 0.0) is False  # 4 complete: too few to judge


def test_hyperband_decisions_depend_on_the_evaluation_index_only_never_on_timing():
    refs = _references([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    answers = [[PruneCheck("hyperband", 9, refs, index=i).start()(1, 0.4) for i in range(8, 20)] for _ in range(2)]
    assert answers[0] == answers[1]
    assert any(answers[0]) and not all(answers[0])  # brackets differ: some runs are judged at epoch 1, some later


def test_checks_refuse_a_reference_from_the_future_and_nothing_is_judged_without_references():
    assert Pruner("successive-halving", 4).checks([], offset=0, size=3) == [None, None, None]
    assert Pruner("none", 4).checks(_references([0.5]), offset=1, size=2) == [None, None]
    with pytest.raises(BioTuneError, match="before"):
        PruneCheck("median", 4, _references([0.5, 0.6]), index=1).start()
    with pytest.raises(BioTuneError, match="pruner"):
        Pruner("asha", 4)


def test_expected_saving_is_a_range_that_grows_with_the_pruner_aggressiveness():
    assert expected_saving("none", 8, (4, 6, 6)) == (0.0, 0.0)
    median, halving = expected_saving("median", 8, (4, 6, 6)), expected_saving("successive-halving", 8, (4, 6, 6))
    assert 0 < median[0] < median[1] < halving[1] < 1 and halving[0] == pytest.approx(halving[1] / 2)
    assert expected_saving("successive-halving", 8, (4,)) == (0.0, 0.0)  # one generation: nothing to prune


def test_a_run_asked_to_stop_ends_after_that_epoch_and_the_last_epoch_is_never_asked():
    pm = build_model("test_efficientnet", 3, weights="random")
    tuner = FineTuner(pm.model, partition_model(pm.model, "stage"), TrainConfig(epochs=3, patience=3, batch_size=8),
                      torch.device("cpu"))
    x, y = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 3
    lrs = [0.0] * (len(tuner.blocks) - 1) + [1e-2]
    asked = []
    stopped = tuner.run(lrs, (x, y), (x, y), seed=0, should_stop=lambda e, a: asked.append((e, a)) or e == 2)
    assert stopped.pruned and stopped.epochs_run == 2 and [e for e, _ in asked] == [1, 2]
    assert asked[-1][1] == max(stopped.val_accuracies)  # the best so far is what the pruner sees
    asked.clear()
    full = tuner.run(lrs, (x, y), (x, y), seed=0, should_stop=lambda e, a: asked.append(e) and False)
    assert not full.pruned and full.epochs_run == 3 and asked == [1, 2]
    assert full.val_accuracies[:2] == stopped.val_accuracies  # stopping changes nothing before it


def _config(pruner: str) -> RunConfig:
    return RunConfig().replace(
        model={"name": "test_efficientnet", "weights": "random"}, data={"image_size": 16},
        train={"epochs": 3, "patience": 3, "batch_size": 64},
        search={"population": 4, "elites": 1, "generations": 2, "seeds": 1, "final_runs": 1, "top_k": 2,
                "pruner": pruner},
    )


@pytest.mark.slow
def test_pruned_evaluations_are_stored_pruned_with_their_fitness_and_read_back_not_retrained(tmp_path):
    runtime = RuntimeConfig(threads=1, cache_memory="0")
    first = run(_config("successive-halving"), run_dir=tmp_path / "r", runtime=runtime)
    pruned = [r for r in first.search.history if r.source == "trained" and r.evaluation.pruned]
    assert pruned, "nothing was pruned"
    assert all(r.candidate.generation > 0 for r in pruned)  # the first generation is never pruned
    assert all(r.evaluation.epochs < 3 for r in pruned)  # stopped early: compute saved
    study = optuna.load_study(study_name="biotune-r", storage=f"sqlite:///{tmp_path / 'r' / 'study.db'}")
    by_number = {t.number: t for t in study.trials}
    for record in pruned:
        trial = by_number[record.trial_number]
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.user_attrs["fitness"] == record.evaluation.fitness
        assert tuple(trial.intermediate_values[s] for s in sorted(trial.intermediate_values)) == record.evaluation.curve
        assert record.evaluation.fitness == pytest.approx(1 - record.evaluation.accuracies[0])
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    assert best["search_stop"]["evaluations_pruned"] == len(pruned) and best["search_stop"]["pruner"] == "successive-halving"
    assert best["compute"]["search"]["epochs"] == sum(r.evaluation.epochs for r in first.search.history)

    again = run(_config("successive-halving"), run_dir=tmp_path / "r", runtime=runtime)  # a resume: all in the study
    assert all(r.source in ("study", "memo") for r in again.search.history)
    assert [r.evaluation for r in again.search.history if r.source == "study"] == \
        [r.evaluation for r in first.search.history if r.source == "trained"]
    assert again.search.best_genes == first.search.best_genes


def test_the_paper_preset_prunes_nothing_and_the_option_reaches_the_config(tmp_path, capsys):
    assert RunConfig().replace(**PRESETS["paper"]).search.pruner == "none"
    assert RunConfig().search.pruner == "none" and not RunConfig().search.warm_start
    code = main(["search", "--dataset", "digits", "--model", "test_efficientnet", "--weights", "random",
                 "--image-size", "16", "--preset", "quick", "--pruner", "median", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "search.pruner" in out and "median" in out
    assert "pruning (median): expected to save" in out
    main(["search", "--dataset", "digits", "--model", "test_efficientnet", "--weights", "random",
          "--image-size", "16", "--preset", "paper", "--epochs", "1", "--dry-run"])
    assert "pruning" not in capsys.readouterr().out.split("resolved:")[1]


def test_wilcoxon_needs_four_paired_seeds_and_the_candidate_behind_on_average():
    from biotune.search.pruning import wilcoxon_prunes

    leader = [0.40, 0.45, 0.41, 0.43, 0.42]
    assert not wilcoxon_prunes([0.5, 0.6, 0.55], leader[:3])  # 3 seeds: p >= 1/8
    assert wilcoxon_prunes([0.5, 0.6, 0.55, 0.52], leader[:4])  # 4 losses in 4: p = 1/16
    assert not wilcoxon_prunes([0.5, 0.3, 0.55, 0.52], leader[:4])  # one win: not clearly behind
    with pytest.raises(BioTuneError, match="--seeds 5 or more"):
        RunConfig().replace(search={"pruner": "wilcoxon", "seeds": 3})


def _by_seed_search(tmp_path, name, accuracy, seeds=(1, 2, 3, 4, 5, 6)):
    from biotune.config import SearchConfig
    from biotune.search.engines import make_engine
    from biotune.search.fitness import FitnessEvaluator
    from biotune.search.loop import run_search
    from biotune.search.study import TrialStore, gene_names
    from biotune.training.executor import Executor
    from biotune.training.session import RunOutcome

    class Stub(Executor):
        def __init__(self):
            self.requests = []

        def run(self, requests, on_result, on_epoch=None, may_start=None):
            for i, r in enumerate(requests):
                self.requests.append(r)
                on_result(i, RunOutcome(accuracy(r), 1, 2, 0.1, False, train_images=100, val_accuracies=(accuracy(r),)))

    search = SearchConfig(population=6, elites=2, generations=1, seeds=len(seeds), pruner="wilcoxon")
    ex = Stub()
    ev = FitnessEvaluator(ex, 2, seeds, 1e-3, "ctx")
    store = TrialStore(f"sqlite:///{tmp_path / name}.db", name, gene_names(["a", "b", "c"]), {})
    return run_search(make_engine("random", 3, search, 0), ev, store, pruner=Pruner("wilcoxon", 2)), ex


def test_wilcoxon_stops_candidates_between_seeds_paired_and_a_resume_reads_them_back(tmp_path):
    def accuracy(request):  # the last block's rate decides; a small per-seed effect shared by every candidate
        return 0.3 + 0.1 * min(request.lrs[-1] / 1e-3, 5.0) + 0.01 * request.seed

    result, ex = _by_seed_search(tmp_path, "w", accuracy)
    pruned = [r for r in result.history if r.source == "trained" and r.evaluation.pruned]
    kept = [r for r in result.history if r.source == "trained" and not r.evaluation.pruned]
    assert pruned and kept, "with a clear leader some candidates stop and the leader runs every seed"
    for r in pruned:
        assert 4 <= len(r.evaluation.seeds) < 6 and r.evaluation.seeds == (1, 2, 3, 4, 5, 6)[:len(r.evaluation.seeds)]
        assert r.evaluation.trained == len(r.evaluation.seeds) and r.evaluation.epochs == 2 * len(r.evaluation.seeds)
    best = min(result.history, key=lambda r: r.evaluation.fitness)
    assert not best.evaluation.pruned and len(best.evaluation.seeds) == 6
    assert result.compute.runs == len(ex.requests) < 6 * len(result.history)  # runs saved, and counted
    # Paired: every run of a generation used the generation's fold and the same seeds, one seed at a time.
    by_fold = {}
    for r in ex.requests:
        by_fold.setdefault(r.fold, []).append(r.seed)
    for fold_seeds in by_fold.values():
        assert fold_seeds == sorted(fold_seeds)  # stage by stage: seed j of every candidate before seed j + 1
    again, ex2 = _by_seed_search(tmp_path, "w", accuracy)
    assert not ex2.requests and again.ranking == result.ranking
    assert [r.evaluation for r in again.history if r.source == "study"] == \
        [r.evaluation for r in result.history if r.source == "trained"]

