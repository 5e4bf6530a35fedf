"""The promises every registered executor keeps (one suite over :data:`EXECUTORS`): the same outcomes as
the sequential local executor, each run reported exactly once, and, for executors with workers, a run
lost with its worker (SIGKILL) retried and still reported once. A new executor registers and inherits
these tests."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from biotune.config import RunConfig, RuntimeConfig
from biotune.training import EXECUTORS, RunRequest, Session, SessionSpec
from biotune.training.executor import LocalExecutor, make_executor

pytestmark = pytest.mark.slow

CONFIG = RunConfig().replace(
    model={"name": "test_efficientnet", "weights": "random"},
    data={"image_size": 24},
    train={"epochs": 2, "patience": 2, "batch_size": 64},
)


@pytest.fixture(scope="module")
def session_and_expected():
    spec = SessionSpec(CONFIG.model, CONFIG.data, CONFIG.train, 2, 0, RuntimeConfig(threads=1))
    session = Session.from_spec(spec)
    n = len(session.blocks)
    requests = [RunRequest(tuple([0.0] * k + [1e-3] * (n - k)), k % 2, 5 + k) for k in range(n - 2)]
    requests.append(RunRequest((1e-3,) * n, None, 9))  # a final run: scored on test too
    expected: dict[int, object] = {}
    LocalExecutor(session).run(requests, expected.__setitem__)
    return spec, session, requests, expected


def _executor(name: str, spec: SessionSpec, session: Session):
    if name == "ray":
        pytest.importorskip("ray", reason="the ray executor needs the biotune[ray] extra")
    runtime = RuntimeConfig(threads=1, executor=name, workers=None if name == "local" else 2)
    return make_executor(runtime, SessionSpec(spec.model, spec.data, spec.train, spec.n_folds, spec.seed, runtime),
                         session)


def _summary(outcome) -> tuple:
    return (outcome.best_val_accuracy, outcome.best_epoch, outcome.epochs_run, outcome.test_accuracy,
            outcome.val_accuracies)


def _busy_worker_pid(name: str, executor) -> int | None:
    """A worker process of ``executor`` that is training a run now."""
    if name == "processes":
        return executor.worker_pids()[0]
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "ray::_perform_on_ray" in " ".join(proc.info["cmdline"] or ()):
            return proc.info["pid"]
    return None


def _run(executor, requests, kill: str | None = None):
    """Run ``requests``; with ``kill`` (the executor's name), SIGKILL a busy worker once the first result
    is in, from another thread (the executor goes on submitting runs meanwhile). Returns how often each
    index was reported, the outcomes and the killed pid."""
    seen: Counter[int] = Counter()
    got, killed, killer = {}, [], []

    def kill_a_busy_worker() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            pid = _busy_worker_pid(kill, executor)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    def on_result(i, outcome):
        if kill is not None and not killer:
            killer.append(threading.Thread(target=kill_a_busy_worker))
            killer[0].start()
        seen[i] += 1
        got[i] = outcome

    executor.run(requests, on_result)
    for thread in killer:
        thread.join()
    return seen, got, killed


@pytest.mark.parametrize("name", tuple(EXECUTORS))
def test_every_executor_keeps_the_contract(name, session_and_expected):
    """The local executor's outcomes, each run reported once; with workers, also after one is killed
    while it trains (its run retried)."""
    spec, session, requests, expected = session_and_expected
    want = {i: _summary(o) for i, o in expected.items()}
    with _executor(name, spec, session) as executor:
        seen, got, _ = _run(executor, requests)
        assert set(seen.values()) == {1} and len(seen) == len(requests)
        assert {i: _summary(o) for i, o in got.items()} == want
        if name == "local":
            return  # no worker to lose: a killed process is a resume (tests/e2e/test_resume.py)
        # Three times the runs, so that workers are still busy after the first result.
        seen, got, killed = _run(executor, requests * 3, kill=name)
    assert killed
    assert set(seen.values()) == {1} and len(seen) == 3 * len(requests)
    assert {i: _summary(o) for i, o in got.items()} == {i: want[i % len(requests)] for i in range(3 * len(requests))}
