"""--time-limit: the search asks no generation that, with the final phase, would not fit; it finishes
with the best it has and says so in best.json."""

from __future__ import annotations

import json

import pytest

from biotune import RunConfig, RuntimeConfig, run
from biotune.cli import main
from biotune.config import parse_duration
from biotune.search import budget as budget_module
from biotune.search.budget import TimeBudget
from biotune.training.estimate import Speed, estimate_runs


def test_durations_parse_and_bad_ones_are_refused():
    assert parse_duration("2h") == 7200 and parse_duration("45m") == 2700 and parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90 and parse_duration("3600") == 3600 and parse_duration(12.5) == 12.5
    for bad in ("", "soon", "0", "-5m", "2x", "1h30"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def _estimate(workers: int = 1):
    speed = Speed(train=0.01, eval=0.0, device="cpu")  # one search run: 4 epochs x 25 images = 1 s
    return estimate_runs(speed, runs=2, train_images=50, val_images=0, test_images=0, epochs=4, patience=2,
                         workers=workers, search_runs=10, search_train_images=25, search_batches=[4, 3, 3])


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_stops_before_the_first_generation_that_would_not_fit(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    estimate = _estimate()
    assert estimate.round_seconds[1] == pytest.approx(1.0) and estimate.final_seconds[1] == pytest.approx(4.0)
    budget = TimeBudget(12.0, estimate, (4, 3, 3), start=0.0)
    assert budget.fitting_generations() == 2  # 4 + 3 rounds of 1 s + 4 s of final runs = 11 s; the third: 14 s
    # Simulate: each run takes 0.9 s (a bit under the estimate's full budget)
    done = []
    for g, runs in enumerate((4, 3, 3)):
        if not budget.allows(g):
            break
        clock.now += 0.9 * runs
        budget.observe(g, 0.9 * runs)
        done.append(g)
    assert done == [0, 1] and not budget.allows(2)
    final = budget._final()
    assert final == pytest.approx(4.0 * 0.9)  # scaled by the measured rounds
    assert clock.now + final <= 12.0  # the search and its final phase fit the limit


def test_generation_zero_always_runs_and_parallel_workers_count_in_whole_rounds(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    tiny = TimeBudget(0.5, _estimate(), (4, 3, 3), start=0.0)
    assert tiny.allows(0) and not tiny.allows(1) and tiny.fitting_generations() == 1
    wide = TimeBudget(10.0, _estimate(workers=4), (4, 3, 3), start=0.0)  # each generation is one round of 1 s
    assert wide.fitting_generations() == 3


@pytest.mark.slow
@pytest.mark.parametrize("final", ["top-k", "race"])
def test_a_short_limit_cuts_the_first_generation_and_the_final_phase_and_still_delivers(tmp_path, monkeypatch, final):
    config = RunConfig().replace(
        model={"name": "test_efficientnet", "weights": "random"}, data={"image_size": 16},
        train={"epochs": 1, "patience": 1, "batch_size": 64},
        search={"population": 3, "elites": 1, "generations": 2, "seeds": 1, "final_runs": 2, "top_k": 2,
                "final": final},
    )
    monkeypatch.setattr(TimeBudget, "minimum", lambda self: 0.0)  # let a limit shorter than one run through
    result = run(config, run_dir=tmp_path / "limited", runtime=RuntimeConfig(threads=1), time_limit="1s")
    assert result.search.stopped_by == "time limit"
    best = json.loads((tmp_path / "limited" / "best.json").read_text())
    stop = best["search_stop"]
    assert stop["evaluations"] == 1 and stop["generations_done"] == 0  # the first evaluation only
    if final == "race":  # the race: FT and the best candidate, not both candidates
        assert [c["label"] for c in best["candidates"]] == ["", "FT"] and best["selected_by"] == "validation race"
    else:
        assert len(best["candidates"]) == 1 and len(best["test_accuracies"]) == 1  # 1 final run, not 2 x 2
    assert (tmp_path / "limited" / "model" / "model.safetensors").is_file()  # a model is still delivered


def test_the_first_generation_runs_one_evaluation_whatever_the_clock():
    from biotune.search.loop import _after_first

    gate = _after_first(2, lambda: False)
    assert [gate() for _ in range(4)] == [True, True, False, False]


def test_the_final_phase_shrinks_to_what_is_left_and_a_limit_below_one_run_is_refused(monkeypatch):
    from biotune.errors import BioTuneError

    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    budget = TimeBudget(12.0, _estimate(), (4, 3, 3), start=0.0)  # final phase: 2 runs, 4 s in all
    assert budget.final_runs_that_fit(2) == 2
    clock.now = 9.5  # 2.5 s left: one final run of 2 s fits
    assert budget.final_runs_that_fit(2) == 1
    clock.now = 11.9
    assert budget.final_runs_that_fit(2) == 1  # never none: the best candidate runs once
    assert budget.minimum() == pytest.approx(1.0 + 2.0)  # one search run and one final run, to their last epoch
    with pytest.raises(BioTuneError, match="at least 3 s"):
        TimeBudget(2.0, _estimate(), (4, 3, 3)).check()


def test_cli_time_limit_in_the_plan_and_a_bad_one_refused(tmp_path, capsys):
    args = ["search", "--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "1",
            "--population", "3", "--elites", "1", "--generations", "2", "--run-dir", str(tmp_path / "r")]
    assert main([*args, "--time-limit", "3h", "--dry-run"]) == 0
    assert "time limit: 3.0 h for the search and its final phase: by the estimate 3 of 3 generations and all" in \
        capsys.readouterr().out
    assert main([*args, "--time-limit", "soon"]) == 2
    assert "`time_limit`: not a duration: 'soon'" in capsys.readouterr().err
    assert main([*args, "--time-limit", "0.01s"]) == 2  # below one evaluation and one final run
    assert "is below what one search evaluation and one final run need here: at least" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_within_a_generation_a_run_starts_only_if_it_and_the_final_phase_fit(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    budget = TimeBudget(10.0, _estimate(), (4, 3, 3), start=0.0)  # a run: 1 s; the final phase: 4 s
    clock.now = 4.9
    assert budget.may_start()  # 4.9 + 1 + 4 <= 10
    clock.now = 5.1
    assert not budget.may_start()  # this run would end the limit's last second inside the final phase


@pytest.mark.slow
def test_a_generation_cut_by_the_time_limit_is_not_told_and_a_resume_runs_only_what_was_not_started(tmp_path):
    import numpy as np

    from biotune.config import SearchConfig
    from biotune.search.engines import make_engine
    from biotune.search.fitness import FitnessEvaluator
    from biotune.search.loop import run_search
    from biotune.search.study import TrialStore, gene_names
    from biotune.training.executor import LocalExecutor
    from biotune.training.session import RunOutcome

    class Session:  # answers any run at once; counts what it trained
        def __init__(self):
            self.requests = []

        def perform(self, request, on_epoch=None):
            self.requests.append(request)
            acc = 0.5 + 0.1 * float(np.mean(request.lrs) > 0.001)
            return RunOutcome(acc, 1, 1, 0.0, False, train_images=10, val_accuracies=(acc,))

    class Budget:  # generations always allowed; generation 0 fits; after it, the first `runs` starts only
        def __init__(self, runs):
            self.left, self.generation = runs, 0

        def allows(self, generation):
            self.generation = generation
            return True

        def observe(self, generation, seconds):
            pass

        def may_start(self):
            if self.generation == 0:
                return True
            self.left -= 1
            return self.left >= 0

    search = SearchConfig(population=4, elites=1, generations=2, seeds=1, fraction=0.5, warm_start=False)
    names = gene_names(["a", "b", "c"])
    url = f"sqlite:///{tmp_path / 's.db'}"

    def search_once(budget):
        session = Session()
        evaluator = FitnessEvaluator(LocalExecutor(session), search.n_folds, (5,), 1e-3, "ctx")
        result = run_search(make_engine("tpe", 3, search, 0), evaluator, TrialStore(url, "s", names, {}), budget=budget)
        return result, session

    cut, first = search_once(Budget(2))
    assert cut.stopped_by == "time limit" and len(cut.generations) == 1  # generation 1 was cut: not told
    assert len(first.requests) == 4 + 2  # generation 0 whole, then the two runs that could start
    assert sum(1 for r in cut.history if r.candidate.generation == 1) == 2 and cut.ranking
    resumed, second = search_once(None)
    assert resumed.stopped_by == "generations done" and len(resumed.generations) == 3
    assert sum(1 for r in resumed.history if r.source == "study") == 6  # nothing run twice
    uninterrupted_url = f"sqlite:///{tmp_path / 'u.db'}"
    session = Session()
    evaluator = FitnessEvaluator(LocalExecutor(session), search.n_folds, (5,), 1e-3, "ctx")
    full = run_search(make_engine("tpe", 3, search, 0), evaluator, TrialStore(uninterrupted_url, "s", names, {}))
    assert [r.evaluation.fitness for r in resumed.history] == [r.evaluation.fitness for r in full.history]
    assert resumed.best_genes == full.best_genes


def test_the_plans_advice_names_only_changes_that_change_something():
    from biotune.config import PRESETS, RunConfig
    from biotune.search.budget import _advice
    from biotune.training.estimate import Estimate, Speed

    speed = Speed(train=0.01, eval=0.001, device="cpu", search_train=0.01)

    def price(cfg, fold):  # seconds grow with the search's evaluations, epochs and fold size
        s, t = cfg.search, cfg.train
        seconds = s.population * s.generations * t.epochs * fold * 0.01
        return Estimate(0, 0, 0, t.epochs, t.patience, seconds / 2, seconds, speed)

    quick = RunConfig().replace(**PRESETS["quick"])
    est = price(quick, 400)
    lines = _advice(quick, est, price, 400, "cpu")
    assert not any("--preset quick" in line for line in lines)  # already the preset in use
    assert any(line.startswith("--fraction") for line in lines) and any("--time-limit" in line for line in lines)
    balanced = RunConfig().replace(**PRESETS["balanced"])
    lines = _advice(balanced, price(balanced, 800), price, 800, "cpu")
    assert any(line.startswith("--preset quick: about") for line in lines)
    narrow = quick.replace(search={"fraction": 0.1})
    assert not any(line.startswith("--fraction") for line in _advice(narrow, est, price, 160, "cuda"))
