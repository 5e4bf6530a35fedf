"""Scale-out as users set it up: the study in a real PostgreSQL server, the runs on a real two-node
Ray cluster (both on 127.0.0.1, started and stopped here); storage drivers, the plan's parallelism,
and which Ray instance a search joins."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from servers import postgres_server, ray_cluster

from biotune import RunConfig, RuntimeConfig, SearchListener, run
from biotune.errors import BioTuneError
from biotune.search.evolution import batch_sizes
from biotune.search.study import with_driver
from biotune.training.estimate import Speed, estimate_runs, rounds
from biotune.training.executor import parallel_runs

pytestmark = pytest.mark.slow  # kills, resumes, clusters and whole searches

CONFIG = RunConfig().replace(
    model={"name": "test_efficientnet", "weights": "random"},
    data={"image_size": 16},
    train={"epochs": 2, "patience": 2, "batch_size": 64},
    search={"population": 4, "elites": 1, "generations": 1, "seeds": 1, "final_runs": 1, "top_k": 2, "seed": 5},
)
ARGS = ["--model", "test_efficientnet", "--weights", "random", "--image-size", "16", "--epochs", "2",
        "--patience", "2", "--batch-size", "64", "--population", "4", "--elites", "1", "--generations", "1",
        "--seeds", "1", "--final-runs", "1", "--top-k", "2", "--seed", "5", "--threads", "1", "--no-progress"]


# ---------------------------------------------------------------------------- storage drivers
def test_a_storage_url_without_driver_gets_the_installed_one(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    installed = {"psycopg": True, "psycopg2": False, "pymysql": False, "MySQLdb": False}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real("json") if installed[name] else None) if name in installed else real(name))
    assert with_driver("postgresql://u:pw@db:5432/x") == "postgresql+psycopg://u:pw@db:5432/x"
    assert with_driver("postgres://u@db/x") == "postgresql+psycopg://u@db/x"
    assert with_driver("sqlite:///a.db") == "sqlite:///a.db"
    assert with_driver("postgresql+psycopg://u@db/x") == "postgresql+psycopg://u@db/x"
    with pytest.raises(BioTuneError, match="pip install psycopg2-binary"):
        with_driver("postgresql+psycopg2://u@db/x")
    with pytest.raises(BioTuneError, match="pip install pymysql"):
        with_driver("mysql://u:pw@db/x")
    installed["psycopg"] = False
    with pytest.raises(BioTuneError, match=r"pip install 'biotune\[postgres\]'"):
        with_driver("postgresql://u:pw@db/x")


def test_a_missing_driver_is_one_message_exit_2_and_nothing_written(tmp_path, capsys):
    pytest.importorskip("psycopg", reason="the biotune[postgres] extra")
    from biotune.cli import main

    try:
        import pymysql  # noqa: F401
        pytest.skip("pymysql is installed here")
    except ImportError:
        pass
    code = main(["search", "--storage", "mysql://me:s3cret-pw@127.0.0.1/db", "--run-dir", str(tmp_path / "r"),
                 "--epochs", "1", "--population", "2", "--elites", "1", "--generations", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install pymysql" in err and "s3cret-pw" not in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- the plan's parallelism
def test_a_generation_takes_whole_rounds_of_the_workers():
    assert rounds(6, 4) == 2 and rounds(4, 4) == 1 and rounds(1, 4) == 1 and rounds(0, 4) == 0
    speed = Speed(train=0.01, eval=0.001, device="cpu")
    common = dict(runs=3, train_images=100, val_images=50, test_images=50, epochs=4, patience=2,
                  search_runs=10, search_train_images=50, search_batches=[4, 6])
    one = estimate_runs(speed, workers=1, **common)
    four = estimate_runs(speed, workers=4, **common)
    assert (one.search_rounds, one.final_rounds) == (10, 3)
    assert (four.search_rounds, four.final_rounds) == (1 + 2, 1)
    run_high = 4 * (50 * 0.01 + 50 * 0.001)
    final_high = 4 * (100 * 0.01 + 50 * 0.001) + 50 * 0.001
    assert four.high == pytest.approx(3 * run_high + final_high)
    assert "4 runs at once" in " ".join(four.lines())


def test_parallel_runs_counts_the_workers_the_executor_starts():
    assert parallel_runs(RuntimeConfig(), "cpu") == 1
    assert parallel_runs(RuntimeConfig(workers_per_device=3), "cpu") == 3
    assert parallel_runs(RuntimeConfig(executor="processes", workers=3), "cpu") == 3
    assert parallel_runs(RuntimeConfig(executor="processes", devices=("cpu", "cpu"), workers_per_device=2), "cpu") == 4
    assert parallel_runs(RuntimeConfig(executor="ray", workers=5), "cpu") == 5
    assert parallel_runs(RuntimeConfig(executor="ray", threads=1), "cpu") == max(1, (os.cpu_count() or 1) // 2)


# ---------------------------------------------------------------------------- which Ray instance
def test_an_unreachable_ray_address_is_one_message_exit_2(tmp_path):
    pytest.importorskip("ray", reason="the ray executor needs the biotune[ray] extra")
    from servers import free_port

    port = free_port()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "biotune", "search", "--executor", "ray", "--ray-address",
                           f"127.0.0.1:{port}", "--run-dir", str(tmp_path / "r"), *ARGS],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--ray-address '127.0.0.1:{port}': cannot join the Ray cluster" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - start < 120  # not Ray's minutes of retries


@pytest.fixture
def current_cluster_file():
    """Ray's record of 'the cluster on this machine' (/tmp/ray/ray_current_cluster), restored after."""
    path = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    saved = path.read_bytes() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    yield path
    if saved is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(saved)


def _private_instance_address(spec) -> str:
    import ray

    from biotune.training.executor import RayExecutor

    executor = RayExecutor(spec, workers=1)
    try:
        return ray.get_runtime_context().gcs_address
    finally:
        executor.close()


# ---------------------------------------------------------------------------- the real engines
@pytest.fixture(scope="module")
def engines():
    """One PostgreSQL server and one two-node Ray cluster for this module's searches."""
    with postgres_server() as url, ray_cluster() as cluster:
        yield url, cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted search: in process, one thread, SQLite."""
    return run(CONFIG, run_dir=tmp_path_factory.mktemp("ref") / "ref", runtime=RuntimeConfig(threads=1)).best


def _same_result(best: dict, ref: dict) -> None:
    assert best["genes"] == ref["genes"]
    assert best["fitness"] == ref["fitness"]
    assert best["test_accuracies"] == ref["test_accuracies"]


def _evaluations(url: str, run_dir: Path) -> Counter:
    """How often each evaluation (generation, role, candidate) is stored as complete or pruned."""
    study = optuna.load_study(study_name=f"biotune-{run_dir.name}", storage=with_driver(url))
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    return Counter(json.dumps({k: v for k, v in t.user_attrs.items() if k in ("generation", "slot", "role", "fold")},
                              sort_keys=True) for t in done)


def _password(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


def _files_with(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_search_killed_and_resumed_on_the_cluster_with_postgres_equals_an_uninterrupted_run(
        engines, reference, tmp_path):
    url, cluster = engines
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "biotune", "search", "--executor", "ray", "--ray-address", cluster.address,
               "--storage", url, "--run-dir", str(run_dir), *ARGS]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        try:
            if sum(_evaluations(url, run_dir).values()) >= 3:
                break
        except Exception:  # the study (or its tables) does not exist yet
            pass
        time.sleep(0.5)
    assert first.poll() is None, "the search ended before it could be killed: " + first.communicate()[0][-2000:]
    os.kill(first.pid, signal.SIGKILL)
    out_first = first.communicate(timeout=60)[0]
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    _same_result(json.loads((run_dir / "best.json").read_text()), reference)
    stored = _evaluations(url, run_dir)
    assert max(stored.values()) == 1, "an evaluation was stored twice"
    assert sum(stored.values()) == sum(batch_sizes(4, 1, 1))  # every evaluation, once
    secret = _password(url)
    assert secret not in out_first + second.stdout + second.stderr
    assert not _files_with(run_dir, secret)
    assert "study                             : postgresql://biotune:***@" in second.stdout
    assert "study.db" not in second.stdout


class _LoseTheWorkerNode(SearchListener):
    """Kills the worker node's processes as soon as the first evaluation is in."""

    def __init__(self, cluster) -> None:
        self.cluster, self.done = cluster, False

    def on_evaluation(self, record) -> None:
        if not self.done:
            self.done = True
            for node in list(self.cluster.worker_nodes):
                self.cluster.remove_node(node, allow_graceful=False)


def test_losing_a_worker_node_mid_search_gives_the_uninterrupted_result(engines, reference, tmp_path, caplog):
    url, cluster = engines
    if not cluster.worker_nodes:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
        cluster.wait_for_nodes()
    listener = _LoseTheWorkerNode(cluster)
    with caplog.at_level(logging.WARNING, logger="biotune"):
        result = run(CONFIG, run_dir=tmp_path / "lost", storage=url, listener=listener,
                     runtime=RuntimeConfig(threads=1, executor="ray", ray_address=cluster.address))
    assert listener.done
    _same_result(result.best, reference)
    assert max(_evaluations(url, tmp_path / "lost").values()) == 1
    lost = [r.getMessage() for r in caplog.records if "Ray lost node 127.0.0.1" in r.getMessage()]
    assert len(lost) == 1, caplog.text
    assert not _files_with(tmp_path / "lost", _password(url))


def test_private_instance_whatever_cluster_the_machine_had(engines, current_cluster_file):
    """No --ray-address: a new local instance, with a live cluster recorded and with a stale one.

    Last in this module: a private instance started in the process that started the cluster
    leaves that cluster unusable to later drivers (Ray's own state), so nothing uses it after."""
    from biotune.training.session import SessionSpec

    _, cluster = engines
    spec = SessionSpec(CONFIG.model, CONFIG.data, CONFIG.train, 2, 0, RuntimeConfig(threads=1))
    current_cluster_file.write_text(cluster.address)  # a live cluster, as 'ray start' records it
    assert _private_instance_address(spec) != cluster.address
    from servers import free_port

    current_cluster_file.write_text(f"127.0.0.1:{free_port()}")  # left stale by a crash
    assert _private_instance_address(spec) not in ("", cluster.address)


def test_the_estimate_prices_the_priors_frozen_prefixes():
    """The prior's share of runs with d leading frozen blocks (the closed form: (n+1) / (n (d+1) (d+2)))
    weighs the per-depth step times, so a search's runs are priced below full fine-tuning."""
    from biotune.search.genome import leading_frozen_distribution

    n = 7
    shares = leading_frozen_distribution(n)
    for d in range(n):
        assert shares[d] == pytest.approx((n + 1) / (n * (d + 1) * (d + 2)), abs=0.015)
    assert set(leading_frozen_distribution(n, head=True)) <= set(range(n))
    speed = Speed(train=0.01, eval=0.0, device="cpu", search_train=0.004)
    priced = estimate_runs(speed, runs=0, train_images=0, val_images=0, test_images=0, epochs=1, patience=1,
                           search_runs=1, search_train_images=100)
    assert priced.high == pytest.approx(0.4)  # 100 images at the prior's mean, not at full fine-tuning's 1.0 s
    assert Speed(train=0.01, eval=0.0, device="cpu").run_train == 0.01  # not measured: priced as full FT
