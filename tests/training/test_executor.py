"""Executors: local, worker processes and Ray give the same search; a killed worker's run is retried."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import optuna
import pytest

from biotune import RunConfig, RuntimeConfig, SearchListener, run
from biotune.training.executor import ProcessExecutor
from biotune.training.session import RunRequest, SessionSpec

pytestmark = pytest.mark.slow  # kills, resumes, clusters and whole searches

CONFIG = RunConfig().replace(
    model={"name": "test_efficientnet", "weights": "random"},
    data={"image_size": 24},
    train={"epochs": 2, "patience": 2, "batch_size": 64},
    search={"population": 4, "elites": 1, "generations": 1, "seeds": 1, "final_runs": 1, "seed": 3},
)


def _search(tmp_path, name: str, listener=None, **runtime):
    # One thread everywhere: the same kernels, so the runs agree to the last bit.
    result = run(CONFIG, run_dir=tmp_path / name, runtime=RuntimeConfig(threads=1, **runtime), listener=listener)
    return result


@pytest.fixture(scope="module")
def local_result(tmp_path_factory):
    return _search(tmp_path_factory.mktemp("local"), "local")


def _trials(run_dir):
    study = optuna.load_study(study_name=f"biotune-{run_dir.name}", storage=f"sqlite:///{run_dir / 'study.db'}")
    return study.get_trials(deepcopy=False)


def test_processes_executor_matches_local(tmp_path, local_result):
    result = _search(tmp_path, "proc", executor="processes", workers=2)
    assert result.search.best_genes == local_result.search.best_genes
    assert result.best["fitness"] == local_result.best["fitness"]
    assert [r.evaluation.accuracies for r in result.search.history] == [
        r.evaluation.accuracies for r in local_result.search.history
    ]
    assert result.best["test_accuracies"] == local_result.best["test_accuracies"]


def test_several_workers_per_device_match_local(tmp_path, local_result):
    """Concurrent runs sharing one device (what fills a GPU) give the sequential executor's results."""
    result = _search(tmp_path, "shared", workers_per_device=2)
    assert result.search.best_genes == local_result.search.best_genes
    assert [r.evaluation.accuracies for r in result.search.history] == [
        r.evaluation.accuracies for r in local_result.search.history
    ]
    assert result.best["test_accuracies"] == local_result.best["test_accuracies"]


def test_ray_executor_matches_local(tmp_path, local_result, monkeypatch):
    pytest.importorskip("ray", reason="the ray executor needs the biotune[ray] extra")
    import ray

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the user's home, as the private instance must leave it
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    result = _search(tmp_path, "ray", executor="ray", workers=2)
    assert not ray.is_initialized()  # the local instance it started is stopped again
    # its credentials lived in the run's temporary space: a cluster started by hand later needs none
    # (tests/e2e/test_ray_nodes.py starts one on such a home)
    assert not (home / ".ray" / "auth_token").exists() and "RAY_AUTH_MODE" not in os.environ
    assert result.search.best_genes == local_result.search.best_genes
    assert result.best["fitness"] == local_result.best["fitness"]
    assert result.best["test_accuracies"] == local_result.best["test_accuracies"]


class _KillOneWorker(SearchListener):
    """SIGKILLs a worker process right after the first trained evaluation, while others train."""

    def __init__(self) -> None:
        self.killed: int | None = None

    def on_evaluation(self, record) -> None:
        import multiprocessing

        if self.killed is None and record.source == "trained":
            workers = multiprocessing.active_children()
            assert workers, "no worker processes to kill"
            self.killed = workers[0].pid
            os.kill(self.killed, signal.SIGKILL)


def test_killed_worker_is_retried_and_each_trial_recorded_once(tmp_path, local_result, caplog):
    listener = _KillOneWorker()
    result = _search(tmp_path, "killed", listener=listener, executor="processes", workers=2)
    assert listener.killed is not None
    # Killed while it trained (its runs are resubmitted) or, when the main process lags, after
    # the generation's last result (new workers start for the next one): logged either way.
    assert "worker process died" in caplog.text
    assert result.search.best_genes == local_result.search.best_genes
    trials = _trials(tmp_path / "killed")
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    slots = Counter((t.user_attrs["generation"], t.user_attrs["slot"]) for t in trials)
    assert set(slots.values()) == {1}
    trained = [r for r in result.search.history if r.source == "trained"]
    assert len(trials) == len(trained) == len(slots)


def test_local_ray_instance_listens_on_loopback_only():
    ray = pytest.importorskip("ray", reason="the ray executor needs the biotune[ray] extra")
    from biotune.training.executor import RayExecutor

    spec = SessionSpec(CONFIG.model, CONFIG.data, CONFIG.train, 2, 0, RuntimeConfig(threads=1))
    executor = RayExecutor(spec, workers=1)
    try:
        nodes = ray.nodes()
        assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    finally:
        executor.close()
    assert not ray.is_initialized()


def test_worker_dying_between_calls_is_replaced():
    """A worker killed after a call's runs finished breaks the pool; the next call starts a new one."""
    spec = SessionSpec(CONFIG.model, CONFIG.data, CONFIG.train, 2, 0, RuntimeConfig(threads=1))
    n = 7  # test_efficientnet's blocks
    requests = [RunRequest(tuple([0.0] * 5 + [1e-3] * (n - 5)), 0, s) for s in (1, 2)]
    with ProcessExecutor(spec, ["cpu", "cpu"], threads=1) as executor:
        first: dict[int, float] = {}
        executor.run(requests, lambda i, o: first.__setitem__(i, o.best_val_accuracy))
        pid = executor.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 30
        while executor._pool is not None and not executor._pool._broken and time.time() < deadline:
            time.sleep(0.05)  # the pool notices the dead worker
        second: dict[int, float] = {}
        executor.run(requests, lambda i, o: second.__setitem__(i, o.best_val_accuracy))
    assert second == first and len(second) == 2
