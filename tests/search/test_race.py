"""The final race: a paused run goes on exactly as if never paused; every racer trains with the same
seed; plain FT races and the chosen racer is never below it (or any dropped racer) on validation;
a racer is dropped only when behind by more than the paired noise; a killed race resumes without
re-running what finished; the paper's protocol keeps its top-k phase."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import timm
import torch

from biotune import PRESETS, RunConfig, run
from biotune.config import RuntimeConfig, TrainConfig
from biotune.models import partition_model
from biotune.search.genome import full_finetune_genome
from biotune.search.race import FT_LABEL, behind, race, rung_epochs
from biotune.training import RunOutcome, Session, SessionSpec
from biotune.training.executor import LocalExecutor
from biotune.training.metrics import paired_gap
from biotune.training.trainer import FineTuner

CONFIG = RunConfig().replace(
    model={"name": "test_efficientnet", "weights": "random"},
    data={"image_size": 16},
    train={"epochs": 4, "patience": 4, "batch_size": 64},
)


def test_a_paused_run_goes_on_exactly_as_one_run():
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=3)
    blocks = partition_model(model)
    tuner = FineTuner(model, blocks, TrainConfig(epochs=4, patience=10, batch_size=8), torch.device("cpu"))
    x, y = torch.randn(40, 3, 16, 16), torch.randint(0, 3, (40,))
    val = torch.randn(20, 3, 16, 16), torch.randint(0, 3, (20,))
    lrs = [1e-3] * len(blocks)
    whole = tuner.run(lrs, (x, y), val, seed=3, keep_best=True)
    first = tuner.run(lrs, (x, y), val, seed=3, keep_best=True, stop_at=2)
    assert first.paused and first.epochs_run == 2 and first.val_accuracies == whole.val_accuracies[:2]
    buffer = io.BytesIO()
    torch.save(first.checkpoint, buffer)  # as a race writes it between stages
    buffer.seek(0)
    rest = tuner.run(lrs, (x, y), val, seed=3, keep_best=True, resume=torch.load(buffer, weights_only=True))
    assert not rest.paused and rest.val_accuracies == whole.val_accuracies
    assert rest.train_losses == whole.train_losses and rest.train_images == whole.train_images
    assert all(torch.equal(whole.best_state[k], rest.best_state[k]) for k in whole.best_state)
    assert torch.equal(whole.best_predicted, rest.best_predicted) and rest.best_val_loss == whole.best_val_loss


def _outcome(predicted, loss, diverged=False) -> RunOutcome:
    predicted = np.asarray(predicted, dtype=np.int32)
    return RunOutcome(float(np.mean(predicted == 1)), 1, 1, 0.0, diverged, best_val_loss=loss, paused=True,
                      val_predicted=predicted)


def test_a_racer_is_dropped_only_when_behind_by_more_than_the_paired_noise_and_in_loss():
    labels = torch.ones(100, dtype=torch.int64)
    leader = _outcome([1] * 90 + [0] * 10, 0.3)
    close = _outcome([0] * 6 + [1] * 88 + [0] * 6, 0.4)  # 2 points behind, 10 images disagree: noise
    far = _outcome([1] * 60 + [0] * 40, 0.9)
    far_but_lower_loss = _outcome([1] * 60 + [0] * 40, 0.2)
    assert not behind(leader, close, labels) and behind(leader, far, labels)
    assert not behind(leader, far_but_lower_loss, labels)
    assert behind(leader, _outcome([1] * 100, 0.1, diverged=True), labels)
    gap, se = paired_gap(torch.from_numpy(leader.val_predicted), torch.from_numpy(far.val_predicted), labels)
    assert gap == pytest.approx(0.3) and 0 < se < 0.1
    assert rung_epochs(30) == (22,) and rung_epochs(4) == (3,) and rung_epochs(1) == ()
    assert rung_epochs(4, (0.25, 0.5)) == (1, 2)


@pytest.fixture(scope="module")
def session():
    spec = SessionSpec(CONFIG.model, CONFIG.data, CONFIG.train, 2, 0, RuntimeConfig(threads=1, cache_memory="0"))
    return Session.from_spec(spec)


def _candidates(n: int) -> list[tuple[float, ...]]:
    head_only = [0.0] * (n - 1) + [0.9, 0.5]  # the head alone, at x6.3
    last_two = [0.0] * (n - 2) + [0.8, 0.8, 0.5]
    tiny = [0.05] * n + [0.0]  # every block at x0.13
    return [tuple(head_only), tuple(last_two), tuple(tiny)]


class _Counting(LocalExecutor):
    """Records every request; raises after ``fail_after`` results (a kill mid-race)."""

    def __init__(self, session, fail_after=None):
        super().__init__(session)
        self.requests, self.fail_after, self.done = [], fail_after, 0

    def run(self, requests, on_result, on_epoch=None, may_start=None):
        def counted(i, outcome):
            on_result(i, outcome)
            self.done += 1
            if self.fail_after is not None and self.done >= self.fail_after:
                raise KeyboardInterrupt

        self.requests += list(requests)
        super().run(requests, counted, on_epoch, may_start)


@pytest.mark.slow
def test_the_race_keeps_ft_never_ends_below_it_and_resumes_without_rerunning(session, tmp_path):
    n, labels = len(session.blocks), session.splits.val[1]
    kw = dict(base_lr=1e-3, seed=11, epochs=4)
    executor = _Counting(session)
    selection = race(executor, _candidates(n), session.blocks, labels, folder=tmp_path / "a", **kw)
    labels_of = [c.label for c in selection.candidates]
    assert labels_of == ["", "", "", FT_LABEL]
    assert selection.candidates[-1].genes == tuple(full_finetune_genome(n))
    assert {r.seed for r in executor.requests} == {11}  # one seed, hence one head start and batch order
    chosen = selection.result
    assert chosen.dropped_at is None and selection.selected_by == "validation race"
    for c in selection.candidates:  # FT and every dropped racer: never above the chosen on validation
        assert chosen.val_accuracy_mean >= c.val_accuracy_mean
        if c.dropped_at is not None:
            assert c.runs[0].epochs_run == c.dropped_at
    assert len(json.loads((tmp_path / "a" / "race.json").read_text())["laps"]) == len(executor.requests)

    killed = _Counting(session, fail_after=5)  # 4 racers at the first rung, then one more
    with pytest.raises(KeyboardInterrupt):
        race(killed, _candidates(n), session.blocks, labels, folder=tmp_path / "b", **kw)
    again = _Counting(session)
    resumed = race(again, _candidates(n), session.blocks, labels, folder=tmp_path / "b", **kw)
    assert all(r.resume_from is not None for r in again.requests)  # nothing from scratch again
    assert len(again.requests) == len(executor.requests) - 5
    assert [c.val_accuracy_mean for c in resumed.candidates] == [c.val_accuracy_mean for c in selection.candidates]
    assert resumed.chosen == selection.chosen
    assert not list((tmp_path / "b").glob("*.pt"))  # checkpoints removed once used


def test_the_paper_protocol_keeps_its_top_k_phase_and_the_option_reaches_the_config():
    assert RunConfig().replace(**PRESETS["paper"]).search.final == "top-k"
    assert RunConfig().search.final_runs_planned == 15
    assert RunConfig().replace(search={"final": "race", "top_k": 3}).search.final_runs_planned == 4


@pytest.mark.slow
def test_a_search_with_a_race_delivers_the_best_finisher_and_reports_each_racer(tmp_path):
    config = CONFIG.replace(search={"population": 3, "elites": 1, "generations": 0, "seeds": 1, "top_k": 2,
                                    "final": "race"})
    result = run(config, run_dir=tmp_path / "r", runtime=RuntimeConfig(threads=1, cache_memory="0"))
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    assert best["selected_by"] == "validation race"
    ft = [c for c in best["candidates"] if c["label"] == FT_LABEL]
    assert len(ft) == 1 and ft[0]["fitness"] is None and ft[0]["curve"]
    chosen = next(c for c in best["candidates"] if c["chosen"])
    assert chosen["dropped_at"] is None and chosen["val_accuracy"] >= ft[0]["val_accuracy"]
    assert (tmp_path / "r" / "race.png").is_file() and (tmp_path / "r" / "model" / "config.json").is_file()
    assert best["compute"]["final"]["epochs"] == sum(len(c["curve"]) for c in best["candidates"])
    assert result.selection.chosen == [c["chosen"] for c in best["candidates"]].index(True)
    first = [r for r in result.search.history if r.source == "trained" and r.candidate.generation == 0]
    assert len({r.fold for r in first}) == 1 and len({r.evaluation.seeds for r in first}) == 1  # paired


@pytest.mark.slow
def test_a_run_directory_written_before_the_race_existed_still_resumes(tmp_path):
    config = CONFIG.replace(search={"population": 3, "elites": 1, "generations": 0, "seeds": 1, "top_k": 1,
                                    "final_runs": 1})
    runtime = RuntimeConfig(threads=1, cache_memory="0")
    run(config, run_dir=tmp_path / "r", runtime=runtime)
    saved = tmp_path / "r" / "config.json"
    document = json.loads(saved.read_text())
    del document["search"]["final"]  # as an older version wrote it
    saved.write_text(json.dumps(document))
    again = run(config, run_dir=tmp_path / "r", runtime=runtime)
    assert again.search.history and all(r.source in ("study", "memo") for r in again.search.history)
