"""Real engines for the scale-out tests, started and stopped by the tests themselves: a PostgreSQL
server in a temporary directory on a free port of 127.0.0.1, and a Ray cluster of two nodes on
127.0.0.1. Where PostgreSQL is not installed the tests skip with the reason, and fail instead
under ``BIOTUNE_REQUIRE_SHARED=1`` (as ``.ci/run`` sets)."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_USER = "biotune"


def unavailable(message: str) -> None:
    """Skip, or fail where the CI requires every engine."""
    if os.environ.get("BIOTUNE_REQUIRE_SHARED") == "1":
        pytest.fail(message + " (BIOTUNE_REQUIRE_SHARED=1)")
    pytest.skip(message)


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server():
    """Yields ``postgresql://biotune:<password>@127.0.0.1:<port>/biotune``; the server is gone after.

    PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (the
    Debian package creates it), its directory owned by that user.
    """
    bindir = _pg_bindir()
    if bindir is None:
        unavailable("PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin)")
    pytest.importorskip("psycopg", reason="the PostgreSQL study needs the biotune[postgres] extra")
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="biotune-pg-")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chmod(root, 0o755)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    password = "pw-" + secrets.token_hex(8)
    pwfile = os.path.join(root, "pwfile")
    Path(pwfile).write_text(password + "\n")
    if as_user:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", data, "-U", PG_USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
            "-E", "UTF8", "--no-sync")
        os.unlink(pwfile)
        run(str(bindir / "pg_ctl"), "-D", data, "-l", log, "-w", "-t", "60", "start",
            "-o", f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=PG_USER, password=password, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {PG_USER}")
        yield f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/{PG_USER}"
    finally:
        if os.path.isdir(data):
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray resolves this machine to 127.0.0.1


@contextmanager
def ray_cluster(worker_cpus: int = 1, head_cpus: int = 1):
    """A head and one worker node on 127.0.0.1 (``ray.cluster_utils.Cluster``); yields the cluster.

    On Linux Ray replaces 127.0.0.1 in an address by the machine's network address; the switch
    that keeps it on loopback (as on macOS) is set here, for this process and for the ``biotune``
    processes the tests start (they inherit the environment), so no test traffic leaves loopback.
    """
    pytest.importorskip("ray", reason="the ray executor needs the biotune[ray] extra")
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    os.environ[LOOPBACK_ONLY] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    local = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, **local})
    try:
        cluster.add_node(num_cpus=worker_cpus, **local)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
