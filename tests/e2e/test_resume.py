"""Resume after SIGKILL between evaluations: same best genome, no finished evaluation repeated."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # kills, resumes, clusters and whole searches

ARGS = ["search", "--dataset", "digits", "--model", "test_efficientnet", "--weights", "random",
        "--image-size", "16", "--epochs", "2", "--patience", "1", "--population", "5", "--elites", "2",
        "--generations", "2", "--seeds", "1", "--final-runs", "1", "--top-k", "2", "--batch-size", "64", "--no-progress",
        "--pruner", "successive-halving"]  # prunes in so small a search: pruned trials are resumed too


def _cmd(run_dir):
    return [sys.executable, "-m", "biotune", *ARGS, "--run-dir", str(run_dir)]


def _complete(db):
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED')").fetchone()[0]
    except sqlite3.Error:
        return 0


def _trial_keys(db):
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "select t.number, a.key, a.value_json from trials t join trial_user_attributes a "
            "on a.trial_id = t.trial_id where t.state in ('COMPLETE', 'PRUNED') and a.key in ('generation', 'slot')"
        ).fetchall()
    keys = {}
    for number, key, value in rows:
        keys.setdefault(number, {})[key] = json.loads(value)
    return [(k["generation"], k["slot"]) for k in keys.values()]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory):
    """The uninterrupted run, shared by every kill point."""
    path = tmp_path_factory.mktemp("resume") / "ref"
    subprocess.run(_cmd(path), check=True, env=ENV, capture_output=True, timeout=300)
    return path


# one kill point, in the second generation (gen 0 done, pruned trials among it): mid-first-generation
# kills are covered by test_faults at random points; this run adds successive halving's pruned trials
@pytest.mark.parametrize("kill_after", [7])
def test_kill_and_resume_equals_uninterrupted(tmp_path, kill_after, ref_dir):
    env = ENV
    run_dir = tmp_path / "killed"

    proc = subprocess.Popen(_cmd(run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _complete(run_dir / "study.db") < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the search finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _complete(run_dir / "study.db")
    assert done_before >= kill_after
    assert not (run_dir / "best.json").exists()

    resumed = subprocess.run(_cmd(run_dir), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ref = json.loads((ref_dir / "best.json").read_text())
    got = json.loads((run_dir / "best.json").read_text())
    assert got["genes"] == ref["genes"] and got["threshold"] == ref["threshold"]
    assert got["fitness"] == ref["fitness"]
    assert got["test_accuracy_mean"] == ref["test_accuracy_mean"]

    keys = _trial_keys(run_dir / "study.db")
    assert len(keys) == len(set(keys)), "a finished evaluation was repeated"
    assert sorted(keys) == sorted(_trial_keys(ref_dir / "study.db"))
    history = (run_dir / "history.csv").read_text()
    assert history.count(",study,") >= done_before  # read back, not retrained
    with sqlite3.connect(ref_dir / "study.db") as con:  # the default search prunes: pruned trials resume too
        assert con.execute("select count(*) from trials where state = 'PRUNED'").fetchone()[0] > 0
