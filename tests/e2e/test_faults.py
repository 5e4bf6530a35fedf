"""Faults: SIGKILL at random points, SIGTERM, diverging runs, out of memory, a busy run directory,
and a storage password that must never be written anywhere."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from biotune.cli import main
from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from biotune.errors import BioTuneError, redact_url, scrub
from biotune.models.blocks import partition_model
from biotune.models.build import build_model
from biotune.search.fitness import WORST_FITNESS, FitnessEvaluator
from biotune.training.executor import LocalExecutor
from biotune.training.session import Session, SessionSpec
from biotune.training.trainer import FineTuner, TrainerOptions

pytestmark = pytest.mark.slow  # kills, resumes, clusters and whole searches

HERE = Path(__file__).resolve().parent
ARGS = ["search", "--dataset", "digits", "--model", "test_efficientnet", "--weights", "random",
        "--image-size", "16", "--epochs", "2", "--patience", "2", "--population", "5", "--elites", "2",
        "--generations", "2", "--seeds", "1", "--final-runs", "2", "--batch-size", "64", "--no-progress"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _search_cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "biotune", *ARGS, "--run-dir", str(run_dir)]


def _trial_rows(db: Path) -> list[tuple[str, int, int]]:
    """(state, generation, slot) of every trial."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "select t.trial_id, t.state, a.key, a.value_json from trials t join trial_user_attributes a "
            "on a.trial_id = t.trial_id where a.key in ('generation', 'slot')"
        ).fetchall()
    trials: dict[int, dict] = {}
    for trial_id, state, key, value in rows:
        trials.setdefault(trial_id, {"state": state})[key] = json.loads(value)
    return [(t["state"], t["generation"], t["slot"]) for t in trials.values()]


def _complete_keys(db: Path) -> list[tuple[int, int]]:
    """Finished evaluations; none while the database is absent or its tables not yet created."""
    try:
        return [(g, s) for state, g, s in _trial_rows(db) if state in ("COMPLETE", "PRUNED")] if db.exists() else []
    except sqlite3.OperationalError:
        return []


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(_search_cmd(run_dir), check=True, env=ENV, capture_output=True, timeout=300)
    return run_dir


def test_sigkill_at_random_points_resumes_without_losing_or_repeating(tmp_path, reference):
    """Killed during an evaluation, between generations, during the final fine-tune and while
    writing the report, the same command resumes each time and ends as an uninterrupted run."""
    rng = random.Random(20261123)
    plan = [
        ("evaluation", rng.randint(2, 9)),  # epochs of search runs (2 per run): mid-generation 0 or 1
        ("generation", 2),  # right after generation 1 is told (between generations 1 and 2)
        ("final", rng.randint(4, 5)),  # an epoch of the second final run (calls: 2 epochs + 1 test each)
        ("report", rng.randint(1, 3)),  # history.csv, convergence.png or best.json
    ]
    run_dir = tmp_path / "run"
    db = run_dir / "study.db"
    finished_before: set[tuple[int, int]] = set()
    for point, n in plan:
        proc = subprocess.run([sys.executable, str(HERE / "fault_driver.py"), point, str(n), "--", *ARGS,
                               "--run-dir", str(run_dir)], env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, (point, n, proc.returncode, proc.stderr[-2000:])
        keys = _complete_keys(db)
        assert len(keys) == len(set(keys)), f"an evaluation was repeated (killed at {point} #{n})"
        assert finished_before <= set(keys), f"a finished evaluation was lost (killed at {point} #{n})"
        finished_before = set(keys)
        best = run_dir / "best.json"
        if best.exists():  # written atomically: complete or absent
            json.loads(best.read_text())
    final_runs = json.loads((run_dir / "final_runs.json").read_text())
    assert len(final_runs) >= 1  # the first final run was saved before the kill in the second

    done = subprocess.run(_search_cmd(run_dir), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref = json.loads((reference / "best.json").read_text())
    got = json.loads((run_dir / "best.json").read_text())
    for key in ("genes", "threshold", "fitness", "test_accuracies", "test_accuracy_mean"):
        assert got[key] == ref[key], key
    keys = _complete_keys(db)
    assert sorted(keys) == sorted(_complete_keys(reference / "study.db"))  # none lost, none repeated
    assert Counter(keys).most_common(1)[0][1] == 1
    assert got["candidates"] == ref["candidates"]
    runs = [(tuple(r["genes"]), r["seed"]) for r in json.loads((run_dir / "final_runs.json").read_text())]
    assert len(runs) == len(set(runs)) == 2 * len(got["candidates"])  # top-k x final seeds, none repeated
    # the fine-tuned model is delivered after the kills too, equal to the uninterrupted run's
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (run_dir / "model" / name).is_file(), name
    assert not (run_dir / "final_weights").exists()
    assert ((run_dir / "model" / "model.safetensors").read_bytes()
            == (reference / "model" / "model.safetensors").read_bytes())
    assert not list(run_dir.glob(".*.tmp")), "temporary files of the killed report writer were left behind"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_cleanly_with_exit_130(tmp_path, sig):
    run_dir = tmp_path / "run"
    # A shell starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN:
    # give the child Ctrl-C's default disposition however pytest itself was launched.
    proc = subprocess.Popen(_search_cmd(run_dir), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while len(_complete_keys(run_dir / "study.db")) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Resume with the same command" in err and "--run-dir" in err and "Traceback" not in err
    assert not list(run_dir.glob(".*.tmp"))
    states = Counter(state for state, _, _ in _trial_rows(run_dir / "study.db"))
    assert states["COMPLETE"] + states["PRUNED"] >= 2


def test_diverging_configuration_gets_the_worst_fitness_and_a_reason(tmp_path):
    # Every multiplier at 10 on a base LR of 10, BatchNorm statistics frozen: the loss is NaN at once.
    spec = SessionSpec(ModelConfig(name="test_efficientnet", weights="random"), DataConfig(image_size=16),
                       TrainConfig(epochs=2, patience=2, lr=10.0, batch_size=64, train_bn=False), 2, 0, RuntimeConfig())
    session = Session.from_spec(spec)
    evaluator = FitnessEvaluator(LocalExecutor(session), 2, (1, 2), 10.0, session.settings_key)
    n = len(session.blocks)
    evaluation = evaluator.evaluate(np.array([1.0] * n + [0.0]), 0)  # every multiplier at 10: LR 100
    assert evaluation.diverged and evaluation.fitness == WORST_FITNESS
    assert re.search(r"seed \d+: training loss became (nan|inf)", evaluation.failure)


def test_search_goes_on_past_diverging_runs_and_records_why(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main([*ARGS, "--lr", "10", "--no-train-bn", "--generations", "1", "--final-runs", "1", "--run-dir", str(run_dir)])
    assert code == 0, capsys.readouterr().err
    import optuna

    study = optuna.load_study(study_name=f"biotune-{run_dir.name}", storage=f"sqlite:///{run_dir / 'study.db'}")
    failed = [t for t in study.trials if "failure" in t.user_attrs]
    assert failed, "base LR 10 should make some configuration diverge"
    for t in failed:
        assert t.value == WORST_FITNESS and "training loss became" in t.user_attrs["failure"]
    best = json.loads((run_dir / "best.json").read_text())
    assert np.isfinite(best["test_accuracy_mean"])  # never NaN, even if final runs diverged
    out = capsys.readouterr().out
    assert ("diverged" in out) == bool(best["final_failures"])


def _oom_tuner(auto: bool, limit: int = 16) -> FineTuner:
    pm = build_model("test_efficientnet", 3, weights="random", seed=0)
    tuner = FineTuner(pm.model, partition_model(pm.model), TrainConfig(epochs=1, batch_size=64), torch.device("cpu"),
                      TrainerOptions(auto_batch_size=auto))
    forward = tuner.model.forward

    def limited(x):  # what a device with room for `limit` images would do
        if tuner.model.training and len(x) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    tuner.model.forward = limited
    return tuner


def test_out_of_memory_names_the_batch_size_and_the_options():
    tuner = _oom_tuner(auto=False)
    x, y = torch.randn(80, 3, 16, 16), torch.randint(0, 3, (80,))
    with pytest.raises(BioTuneError, match=r"out of memory on cpu with batch size 64: lower --batch-size.*--auto-batch-size"):
        tuner.run([1e-3] * len(tuner.blocks), (x, y), (x, y), seed=0)


def test_auto_batch_size_halves_and_retries(caplog):
    tuner = _oom_tuner(auto=True)
    x, y = torch.randn(80, 3, 16, 16), torch.randint(0, 3, (80,))
    with caplog.at_level(logging.WARNING):
        result = tuner.run([1e-3] * len(tuner.blocks), (x, y), (x, y), seed=0)
    assert result.batch_size == 16 and result.epochs_run == 1
    assert "retrying the run with batch size 32" in caplog.text and "batch size 16" in caplog.text


def test_second_process_on_a_run_directory_is_refused(tmp_path, capsys):
    import fcntl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another biotune process at work
        held.write("4242")
        held.flush()
        code = main([*ARGS, "--generations", "0", "--final-runs", "1", "--run-dir", str(run_dir)])
        err = capsys.readouterr().err
        assert code == 2 and "in use by another biotune process (pid 4242)" in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written
        # A shared storage, chosen deliberately, is not locked out.
        shared = f"sqlite:///{tmp_path / 'shared.db'}"
        assert main([*ARGS, "--generations", "0", "--final-runs", "1", "--run-dir", str(run_dir), "--storage", shared]) == 0


def test_storage_password_is_never_written_logged_or_printed(tmp_path, monkeypatch, capsys, caplog):
    """A password in --storage stays out of config.json, every output file, the study, logs and the terminal.

    SQLite takes no credentials, so the postgres URL is served by a SQLite file underneath:
    what is checked is what BioTune itself writes and prints.
    """
    import optuna

    secret = "pw-Zq81-secret"
    url = f"postgresql://alice:{secret}@db.example:5432/biotune"
    backing = f"sqlite:///{tmp_path / 'backing.db'}"
    from biotune.search.study import with_driver

    create = optuna.create_study  # the URL reaches Optuna with its driver named (postgresql+psycopg://)
    monkeypatch.setattr(optuna, "create_study", lambda *a, storage=None, **k: create(
        *a, storage=backing if storage in (url, with_driver(url)) else storage, **k))
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.DEBUG):
        code = main([*ARGS, "--generations", "0", "--final-runs", "1", "--run-dir", str(run_dir), "--storage", url, "-vv"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert secret not in out + err + caplog.text
    for path in [*run_dir.rglob("*"), tmp_path / "backing.db"]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert json.loads((run_dir / "config.json").read_text())["resolved"]["storage"] == (
        "postgresql://alice:***@db.example:5432/biotune")


def test_redaction_helpers():
    assert redact_url("mysql+pymysql://u:p%40ss@h/db") == "mysql+pymysql://u:***@h/db"
    assert redact_url("sqlite:///runs/x/study.db") == "sqlite:///runs/x/study.db"
    assert scrub("failed: password p@ss rejected", "postgresql://u:p@ss@h/db") == "failed: password *** rejected"

