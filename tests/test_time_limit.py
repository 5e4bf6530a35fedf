"""--time-limit: the search asks no generation that, with the final phase, would not fit; it finishes
with the best it has and says so in best.json."""

from __future__ import annotations

import json

import pytest

from biotune import RunConfig, RuntimeConfig, run
from biotune.cli import main
from biotune.config import parse_duration
from biotune.search import plan as plan_module
from biotune.search.plan import TimeBudget
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
    monkeypatch.setattr(plan_module.time, "perf_counter", clock)
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
    assert done == [0, 1] and budget.stopped_at == 2
    final = budget._final()
    assert final == pytest.approx(4.0 * 0.9)  # scaled by the measured rounds
    assert clock.now + final <= 12.0  # the search and its final phase fit the limit


def test_generation_zero_always_runs_and_parallel_workers_count_in_whole_rounds(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(plan_module.time, "perf_counter", clock)
    tiny = TimeBudget(0.5, _estimate(), (4, 3, 3), start=0.0)
    assert tiny.allows(0) and not tiny.allows(1) and tiny.fitting_generations() == 1
    wide = TimeBudget(10.0, _estimate(workers=4), (4, 3, 3), start=0.0)  # each generation is one round of 1 s
    assert wide.fitting_generations() == 3


def test_a_run_stopped_by_its_time_limit_finishes_with_the_best_it_has(tmp_path, capsys):
    config = RunConfig().replace(
        model={"name": "test_efficientnet", "weights": "random"}, data={"image_size": 16},
        train={"epochs": 1, "patience": 1, "batch_size": 64},
        search={"population": 3, "elites": 1, "generations": 2, "seeds": 1, "final_runs": 1, "top_k": 2},
    )
    result = run(config, run_dir=tmp_path / "limited", runtime=RuntimeConfig(threads=1), time_limit="1s")
    assert result.search.stopped_by == "time limit"
    assert len(result.search.generations) == 1  # only the first generation, which always runs
    best = json.loads((tmp_path / "limited" / "best.json").read_text())
    assert best["search_stop"] == {"stopped_by": "time limit", "generations_done": 1, "generations_planned": 3,
                                   "time_limit_seconds": 1.0}
    assert (tmp_path / "limited" / "model" / "model.safetensors").is_file()  # the final phase still delivers


def test_cli_time_limit_in_the_plan_and_a_bad_one_refused(tmp_path, capsys):
    args = ["search", "--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "1",
            "--population", "3", "--elites", "1", "--generations", "2", "--run-dir", str(tmp_path / "r")]
    assert main([*args, "--time-limit", "3h", "--dry-run"]) == 0
    assert "time limit: 3.0 h for the search and its final phase: by the estimate 3 of 3 generations fit" in \
        capsys.readouterr().out
    assert main([*args, "--time-limit", "soon"]) == 2
    assert "`time_limit`: not a duration: 'soon'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
