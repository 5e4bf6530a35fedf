"""Ray as users start it by hand (``ray start``): a two-node cluster forms on a home folder as the
private instance leaves it, and a node whose raylet is killed with SIGKILL costs one warning line,
not Ray's log dump."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from servers import free_port

pytestmark = pytest.mark.slow
pytest.importorskip("ray", reason="the ray executor needs the biotune[ray] extra")

def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)  # ~/.ray of this test, not the machine's
    # a dead node is declared dead after 3 missed health checks 0.5 s apart: faster than Ray's defaults
    env.update(RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="3")
    return env


@contextmanager
def hand_started_cluster(home: Path, worker_resources: str = '{"worker_node": 1}'):
    """``ray start --head`` and ``ray start --address`` on 127.0.0.1, as a user types them; yields the address."""
    env, port = _env(home), free_port()
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run(["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        "--include-dashboard=false"], env=env, check=True, capture_output=True, timeout=180)
        worker = subprocess.run(["ray", "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                 f"--resources={worker_resources}"], env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        yield address, env
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def _finished_trials(db: Path) -> int:
    """Finished evaluations in a run's study (0 before it exists)."""
    import sqlite3

    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # tables not created yet, or busy
        return 0


def _worker_raylet() -> int:
    """PID of the second node's raylet (``ray start --address``: its socket is ``raylet.1``)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1].endswith("/raylet") and "sockets/raylet.1" in line:
            return int(parts[0])
    raise AssertionError("the worker node's raylet is not running")


def test_a_hand_started_cluster_forms_and_a_killed_node_costs_one_line(tmp_path):
    # The home folder as a private instance leaves it (no ~/.ray/auth_token: test_ray_executor_matches_local)
    home = tmp_path / "home"
    home.mkdir()
    with hand_started_cluster(home) as (address, env):  # its second node joins: it is the one lost below
        log = tmp_path / "search.log"
        args = [sys.executable, "-m", "biotune", "search", "--model", "test_efficientnet", "--weights", "random",
                "--image-size", "16", "--epochs", "2", "--patience", "2", "--population", "4", "--elites", "1",
                "--generations", "1", "--seeds", "1", "--final-runs", "1", "--top-k", "1", "--threads", "1",
                "--executor", "ray", "--ray-address", address, "--run-dir", str(tmp_path / "run"), "--no-progress"]
        with open(log, "w") as out:
            search = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.time() + 300
            while time.time() < deadline and _finished_trials(tmp_path / "run" / "study.db") < 1 \
                    and search.poll() is None:
                time.sleep(0.5)  # until the search has trained on the cluster
            assert search.poll() is None, log.read_text()[-3000:]
            os.kill(_worker_raylet(), signal.SIGKILL)
            assert search.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert text.count("Ray lost node") == 1, text[-3000:]
    assert "Raylet is terminated" not in text and "state-dump" not in text, text[-3000:]
