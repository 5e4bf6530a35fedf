"""Executors: where fine-tuning runs happen — in this process, in worker processes, or on Ray.

Every executor takes :class:`~biotune.training.session.RunRequest` objects and hands each
:class:`~biotune.training.session.RunOutcome` back to the caller, in the caller's thread, exactly once.
The search engine in the main process stays the single writer of the study; workers only
train. A worker process that dies (killed, out of memory) loses its runs, which are
submitted again (up to ``max_retries`` times each), never recorded twice.

Workers build their own :class:`~biotune.training.session.Session` from the same
:class:`~biotune.training.session.SessionSpec` (dataset path, model, seed), so they train on the same
data and weights as the main process. On a Ray cluster the dataset path must therefore be
readable on every node.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import tempfile
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

import torch

from .._registry import EXECUTORS
from ..config import RuntimeConfig
from ..errors import BioTuneError
from .session import RunOutcome, RunRequest, Session, SessionSpec

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor", "make_executor", "parallel_runs", "run_threads"]

logger = logging.getLogger(__name__)

OnResult = Callable[[int, RunOutcome], None]
OnEpoch = Callable[[int, float, float], None]
MayStart = Callable[[], bool]


class Executor:
    """Runs requests and reports each outcome once; a context manager that frees its workers.

    An implementation registers in :data:`EXECUTORS` and builds itself from the run's settings with
    :meth:`create`; the contract tests (``tests/training/test_executors.py``) check every registered
    one: the same results as the local executor, a run lost with its worker retried, each run reported once.
    """

    @classmethod
    def create(cls, runtime: RuntimeConfig, spec: SessionSpec, session: Session) -> "Executor":
        """The executor for ``runtime``'s settings (``session``: this process's, for in-process runs)."""
        raise NotImplementedError

    def run(self, requests: Sequence[RunRequest], on_result: OnResult, on_epoch: OnEpoch | None = None,
            may_start: MayStart | None = None) -> None:
        """Perform the requests; ``on_result(index, outcome)`` as each finishes (any order).

        ``may_start()`` is asked before each run starts; once it says no, no further run starts
        (runs in flight finish) and the rest are left undone: a time limit.
        """
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@EXECUTORS.register("local", "one run after another in this process (the default)")
class LocalExecutor(Executor):
    """Sequential, in this process, on the given session (per-epoch progress is reported)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    def create(cls, runtime: RuntimeConfig, spec: SessionSpec, session: Session) -> "LocalExecutor":
        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        return cls(session)

    def run(self, requests, on_result, on_epoch=None, may_start=None) -> None:
        for i, request in enumerate(requests):
            if may_start is not None and not may_start():
                return
            on_result(i, self.session.perform(request, on_epoch))


# ---------------------------------------------------------------------------- processes
_WORKER_SESSION: Session | None = None


def _init_process(spec: SessionSpec, devices, threads: int) -> None:
    """Worker start-up: ignore Ctrl-C (the main process stops the workers), build the session."""
    global _WORKER_SESSION
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    device = devices.get()
    runtime = dataclasses.replace(spec.runtime, device=device, executor="local", workers=None, devices=None)
    _WORKER_SESSION = Session.from_spec(dataclasses.replace(spec, runtime=runtime))


def _perform_in_process(request: RunRequest) -> RunOutcome:
    assert _WORKER_SESSION is not None, "worker used before its initializer ran"
    return _WORKER_SESSION.perform(request)


@EXECUTORS.register("processes", "one worker process per device, or --workers CPU processes, on this machine")
class ProcessExecutor(Executor):
    """One worker process per device (spawned; each holds its own session).

    Args:
        spec: what each worker prepares.
        devices: one entry per worker, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]``.
        threads: intra-op threads per worker.
        max_retries: times a run lost with its worker is submitted again.
    """

    def __init__(self, spec: SessionSpec, devices: Sequence[str], *, threads: int = 1, max_retries: int = 2) -> None:
        self.spec = spec
        self.devices = list(devices)
        self.threads = threads
        self.max_retries = max_retries
        self._pool: ProcessPoolExecutor | None = None

    @classmethod
    def create(cls, runtime: RuntimeConfig, spec: SessionSpec, session: Session) -> "ProcessExecutor":
        devices = _process_devices(runtime, str(session.device))
        for d in devices:
            dataclasses.replace(runtime, device=d, devices=None).resolve_device()  # a clear error for a bad name
        return cls(spec, devices, threads=run_threads(runtime, str(session.device)))

    def _start(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe with torch threads
        queue = ctx.Queue()
        for device in self.devices:
            queue.put(device)
        return ProcessPoolExecutor(
            len(self.devices), mp_context=ctx, initializer=_init_process, initargs=(self.spec, queue, self.threads)
        )

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for monitoring)."""
        # ProcessPoolExecutor has no public accessor for its processes before Python 3.14.
        return [] if self._pool is None else [p.pid for p in self._pool._processes.values()]  # type: ignore[attr-defined]

    def run(self, requests, on_result, on_epoch=None, may_start=None) -> None:
        # One run per worker in flight, the next submitted as one finishes: a run is only started
        # when a worker is free for it, so ``may_start`` is asked when it really starts.
        queue = list(enumerate(requests))
        attempts: Counter[int] = Counter()
        in_flight: dict = {}
        while queue or in_flight:
            if self._pool is None:
                self._pool = self._start()
            broken = False
            while queue and len(in_flight) < len(self.devices) and (may_start is None or may_start()):
                i, request = queue[0]
                try:
                    in_flight[self._pool.submit(_perform_in_process, request)] = i
                except BrokenProcessPool:
                    broken = True
                    break
                queue.pop(0)
            if not in_flight and not broken:
                return  # nothing in flight and nothing may start: the rest stays undone
            lost: list[int] = []
            if in_flight:
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in done:
                    i = in_flight.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        lost.append(i)
                        continue
                    on_result(i, outcome)
            if not (lost or broken):
                continue
            # A dead worker breaks the pool: every run in flight is lost with it.
            lost += list(in_flight.values())
            in_flight.clear()
            self._kill()
            if not lost:
                logger.warning("a worker process died after its runs had finished; starting new workers")
                continue
            for i in lost:
                attempts[i] += 1
                if attempts[i] > self.max_retries:
                    raise BioTuneError(
                        f"a worker process died {attempts[i]} times while running {requests[i]}; "
                        "see the log above (out of memory? lower --batch-size or --workers)"
                    )
            queue = [(i, requests[i]) for i in sorted(lost)] + queue
            logger.warning("a worker process died; submitting its %d unfinished run(s) again", len(lost))

    def _kill(self) -> None:
        if self._pool is None:
            return
        for process in list(self._pool._processes.values()):  # type: ignore[attr-defined]
            if process.is_alive():
                process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        self._kill()


# ---------------------------------------------------------------------------- ray
_RAY_SESSIONS: dict[SessionSpec, Session] = {}
_RAY_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _perform_on_ray(spec: SessionSpec, request: RunRequest, threads: int) -> RunOutcome:
    """A Ray task: the worker process keeps its session between tasks of the same spec."""
    session = _RAY_SESSIONS.get(spec)
    if session is None:
        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() and spec.runtime.resolve_device().type == "cuda" else "cpu"
        runtime = dataclasses.replace(spec.runtime, device=device, executor="local", workers=None, devices=None)
        session = _RAY_SESSIONS[spec] = Session.from_spec(dataclasses.replace(spec, runtime=runtime))
    return session.perform(request)


@EXECUTORS.register("ray", "each run a Ray task: a private local instance, or a cluster at --ray-address "
                          "(biotune[ray])")
class RayExecutor(Executor):
    """Each run a Ray task with the CPUs (and GPU) it needs.

    Args:
        spec: what each Ray worker prepares.
        workers: runs in flight at once (default: what the cluster's CPUs or GPUs allow;
            a local instance gets half this machine's cores).
        address: an existing cluster (``"auto"``, ``"ray://host:10001"``...); ``None``
            starts a local instance bound to 127.0.0.1, stopped by :meth:`close`.
        threads: CPUs (intra-op threads) per run.
        gpus: GPUs per run (1 on a CUDA spec by default).
    """

    @classmethod
    def create(cls, runtime: RuntimeConfig, spec: SessionSpec, session: Session) -> "RayExecutor":
        return cls(spec, workers=runtime.workers, address=runtime.ray_address, threads=runtime.threads or 1)

    def __init__(
        self,
        spec: SessionSpec,
        *,
        workers: int | None = None,
        address: str | None = None,
        threads: int = 1,
        gpus: float | None = None,
        max_retries: int = 2,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._owns = False
        if gpus is None:
            gpus = 1.0 if spec.runtime.resolve_device().type == "cuda" else 0.0
        self._credentials: _PrivateCredentials | None = None
        _quiet_raylet_reports(ray)
        if not ray.is_initialized():
            if address is None:
                self._credentials = _PrivateCredentials()
            try:
                self._owns = _connect(ray, address, num_cpus=None if address else
                                      (workers or _local_ray_workers(threads, gpus)) * threads, gpus=gpus)
            except BaseException:
                self._forget_credentials()
                raise
        if workers is None:
            workers = _ray_concurrency(ray, threads, gpus)
        self.workers = max(1, workers)
        self.threads = threads
        self.max_retries = max_retries
        self._nodes = _alive_nodes(ray)
        self._task = ray.remote(_perform_on_ray).options(num_cpus=threads, num_gpus=gpus, max_retries=max_retries)
        self._spec = ray.put(spec)

    def run(self, requests, on_result, on_epoch=None, may_start=None) -> None:
        ray = self._ray
        lost_errors = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError)
        queue = list(enumerate(requests))
        attempts: Counter[int] = Counter()
        in_flight: dict = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < self.workers and (may_start is None or may_start()):
                    i, request = queue.pop(0)
                    in_flight[self._task.remote(self._spec, request, self.threads)] = i
                if not in_flight:
                    return  # nothing may start: the rest stays undone
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=_NODE_POLL_SECONDS)
                self._check_nodes(len(in_flight))
                for ref in done:
                    i = in_flight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except lost_errors as err:
                        attempts[i] += 1
                        if attempts[i] > self.max_retries:
                            raise BioTuneError(f"Ray lost run {requests[i]} {attempts[i]} times: {err}") from None
                        logger.warning("Ray lost a run after its own retries (%s); BioTune submits it again",
                                       type(err).__name__)
                        queue.append((i, requests[i]))
                        continue
                    except ray.exceptions.RayTaskError as err:
                        raise err.as_instanceof_cause() from None
                    on_result(i, outcome)
        except BaseException:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise

    def _check_nodes(self, in_flight: int) -> None:
        """One warning line per node that left the cluster; Ray resubmits its tasks itself."""
        alive = _alive_nodes(self._ray)
        for node, address in sorted(self._nodes.items()):
            if node not in alive:
                logger.warning("Ray lost node %s (%s); its runs are resubmitted by Ray (%d run(s) in flight, "
                               "up to %d retries each); the search goes on with %d node(s)", address, node[:8],
                               in_flight, self.max_retries, len(alive))
        self._nodes = alive

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False
        self._forget_credentials()

    def _forget_credentials(self) -> None:
        if self._credentials is not None:
            self._credentials.remove()
            self._credentials = None


class _PrivateCredentials:
    """The private local instance's authentication token, kept in a temporary folder of this run.

    ``ray.init()`` of a new local instance turns token authentication on and, without a token,
    writes one to ``~/.ray/auth_token``; from then on every cluster started by hand on the machine
    (``ray start``) requires it, and a second node started without it is refused. Pointing Ray at a
    token of our own (``RAY_AUTH_TOKEN_PATH``, mode ``token``) keeps the home folder as it was found;
    the environment is restored and the token removed when the instance stops.
    """

    _VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")

    def __init__(self) -> None:
        self._saved = {k: os.environ.get(k) for k in self._VARS}
        self.folder = tempfile.mkdtemp(prefix="biotune-ray-auth-")
        path = os.path.join(self.folder, "auth_token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        os.environ.pop("RAY_AUTH_TOKEN", None)
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = path
        self._refresh()

    @staticmethod
    def _refresh() -> None:
        """Make this process's Ray see the environment (what Ray does itself when it turns token mode on)."""
        try:
            from ray._raylet import AuthenticationTokenLoader, Config
        except ImportError:  # a Ray without token authentication: nothing to refresh
            return
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    def remove(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.folder, ignore_errors=True)
        self._refresh()


_RAYLET_DIED = "Raylet is terminated"


def _quiet_raylet_reports(ray) -> None:
    """Keep Ray's report of a dead raylet (its last 20 log lines, published to the driver and
    printed to the terminal by Ray's error listener, once per reporting process) out of the
    terminal: :meth:`RayExecutor._check_nodes` says it in one line per lost node. The report goes
    to this module's logger at debug level instead; every other message Ray prints is kept.
    Wraps ``ray._private.worker.print_to_stdstream`` (no public switch exists), once."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_biotune_quiet", False):
        return

    def print_to_stdstream(data, *args, **kwargs):
        lines = data.get("lines") or []
        if data.get("pid") == "raylet" and any(_RAYLET_DIED in str(line) for line in lines):
            logger.debug("Ray's report of a dead raylet: %s", "\n".join(map(str, lines)))
            return None
        return original(data, *args, **kwargs)

    print_to_stdstream._biotune_quiet = True
    worker.print_to_stdstream = print_to_stdstream


_NODE_POLL_SECONDS = 2.0  # how often the run loop looks for lost nodes while it waits


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BioTuneError("the ray executor needs Ray: pip install 'biotune[ray]'") from None
    return ray


def _local_ray_workers(threads: int, gpus: float) -> int:
    """Runs at once on a private local instance: half this machine's cores (or its GPUs)."""
    if gpus:
        return max(1, int(torch.cuda.device_count() // gpus))
    return max(1, (os.cpu_count() or 1) // 2 // threads)


def _connect(ray, address: str | None, *, num_cpus: int | None, gpus: float) -> bool:
    """Start a private local instance (``address`` None) or join a cluster; True when connected here.

    A private instance is always new (``address="local"``): a cluster started on this machine
    before, live or left stale in ``/tmp/ray`` by a crash, is never joined by chance.
    """
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address is None:
        # A local instance must listen on the loopback address only. Ray does that where it
        # runs single-node (macOS, Windows); this switch asks for the same on Linux. It is
        # read by Ray's processes (environment) and by an already imported ray (constant).
        import ray._private.ray_constants as ray_constants

        os.environ[_RAY_LOCAL_ONLY] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", num_cpus=num_cpus, num_gpus=None if gpus else 0, _node_ip_address="127.0.0.1",
                 **kwargs)
        return True
    problem = _unreachable(address)
    if problem:
        raise BioTuneError(f"--ray-address {address!r}: cannot join the Ray cluster ({problem})")
    try:
        ray.init(address=address, **kwargs)
    except Exception as err:  # ConnectionError, TimeoutError, RuntimeError, ValueError, Ray's own...
        if ray.is_initialized():
            ray.shutdown()
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BioTuneError(f"--ray-address {address!r}: cannot join the Ray cluster ({first})") from None
    return True


def _unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why the cluster at ``address`` cannot be joined, or None when its port answers.

    ``ray.init`` retries an unreachable or stale address for minutes before it gives up; a
    TCP connection to the head tells at once. ``auto`` is looked up as Ray does it
    (``RAY_ADDRESS``, then ``/tmp/ray/ray_current_cluster``).
    """
    import socket
    import tempfile

    target = address.removeprefix("ray://")
    if target == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        current = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")
        if not target and os.path.isfile(current):
            with open(current) as fh:
                target = fh.read().strip()
        if not target:
            return "no Ray cluster was started on this machine ('ray start --head' first)"
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return None  # a form Ray knows and we do not: let ray.init judge it
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as err:
        return f"nothing answers at {host}:{port}: {err.strerror or err}"


def _ray_concurrency(ray, threads: int, gpus: float) -> int:
    """Runs at once on the connected cluster: its CPUs (or GPUs) as Ray reports them, against each
    run's request of ``threads`` CPUs and ``gpus`` GPUs."""
    resources = ray.cluster_resources()
    if gpus:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, int(resources.get("CPU", 1) // threads))


def _alive_nodes(ray) -> dict[str, str]:
    """``{node id: address}`` of the cluster's live nodes."""
    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}


def parallel_runs(runtime: RuntimeConfig, device: str) -> int:
    """How many training runs the executor ``runtime`` asks for performs at once on ``device``
    (the session's training device): worker processes × runs per device, or on Ray the cluster's
    CPUs/GPUs against each run's request. Joins (and leaves) a Ray cluster to ask it."""
    if runtime.executor == "local":
        return runtime.workers_per_device
    if runtime.executor == "processes":
        return len(_process_devices(runtime, device))
    threads = runtime.threads or 1
    gpus = 1.0 if torch.device(device).type == "cuda" else 0.0
    if runtime.workers is not None:
        return runtime.workers
    if runtime.ray_address is None:
        return _local_ray_workers(threads, gpus)
    ray = _import_ray()
    if ray.is_initialized():
        return _ray_concurrency(ray, threads, gpus)
    _connect(ray, runtime.ray_address, num_cpus=None, gpus=gpus)
    try:
        return _ray_concurrency(ray, threads, gpus)
    finally:
        ray.shutdown()


def run_threads(runtime: RuntimeConfig, device: str) -> int | None:
    """Intra-op threads each run gets from the executor (None: this process's setting)."""
    if runtime.threads or runtime.executor == "local":
        return runtime.threads
    if runtime.executor == "processes":
        return max(1, (os.cpu_count() or 1) // len(_process_devices(runtime, device)))
    return 1


def _process_devices(runtime: RuntimeConfig, device: str) -> list[str]:
    """One entry per worker process: the devices of ``--devices`` (or every GPU, or ``--workers``
    copies of the session's device), each repeated ``--workers-per-device`` times."""
    cores = os.cpu_count() or 1
    devices = list(runtime.devices) if runtime.devices else None
    if devices is None:
        if torch.device(device).type == "cuda" and runtime.workers is None:
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        else:
            devices = [str(device)] * (runtime.workers or max(1, cores // 2))
    elif runtime.workers is not None:
        devices = [devices[i % len(devices)] for i in range(runtime.workers)]
    return [d for d in devices for _ in range(runtime.workers_per_device)]


def make_executor(runtime: RuntimeConfig, spec: SessionSpec, session: Session) -> Executor:
    """The executor ``runtime`` asks for (a name in :data:`EXECUTORS`); ``session`` serves the local one.
    Several workers per device make the local executor one of worker processes on that device."""
    if runtime.executor == "local" and runtime.workers_per_device > 1:  # several runs at once on one device
        runtime = dataclasses.replace(runtime, executor="processes", devices=(str(session.device),))
    return EXECUTORS.get(runtime.executor).create(runtime, spec, session)
