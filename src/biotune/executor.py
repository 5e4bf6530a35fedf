"""Executors: where fine-tuning runs happen — in this process, in worker processes, or on Ray.

Every executor takes :class:`~biotune.session.RunRequest` objects and hands each
:class:`~biotune.session.RunOutcome` back to the caller, in the caller's thread, exactly once.
The search engine in the main process stays the single writer of the study; workers only
train. A worker process that dies (killed, out of memory) loses its runs, which are
submitted again (up to ``max_retries`` times each), never recorded twice.

Workers build their own :class:`~biotune.session.Session` from the same
:class:`~biotune.session.SessionSpec` (dataset path, model, seed), so they train on the same
data and weights as the main process. On a Ray cluster the dataset path must therefore be
readable on every node.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

import torch

from .config import RuntimeConfig
from .errors import BioTuneError
from .session import RunOutcome, RunRequest, Session, SessionSpec

__all__ = ["Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor", "make_executor"]

logger = logging.getLogger(__name__)

OnResult = Callable[[int, RunOutcome], None]
OnEpoch = Callable[[int, float, float], None]


class Executor:
    """Runs requests and reports each outcome once; a context manager that frees its workers."""

    parallel = False

    def run(self, requests: Sequence[RunRequest], on_result: OnResult, on_epoch: OnEpoch | None = None) -> None:
        """Perform every request; ``on_result(index, outcome)`` as each finishes (any order)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """Sequential, in this process, on the given session (per-epoch progress is reported)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def run(self, requests, on_result, on_epoch=None) -> None:
        for i, request in enumerate(requests):
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


class ProcessExecutor(Executor):
    """One worker process per device (spawned; each holds its own session).

    Args:
        spec: what each worker prepares.
        devices: one entry per worker, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]``.
        threads: intra-op threads per worker.
        max_retries: times a run lost with its worker is submitted again.
    """

    parallel = True

    def __init__(self, spec: SessionSpec, devices: Sequence[str], *, threads: int = 1, max_retries: int = 2) -> None:
        self.spec = spec
        self.devices = list(devices)
        self.threads = threads
        self.max_retries = max_retries
        self._pool: ProcessPoolExecutor | None = None

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

    def run(self, requests, on_result, on_epoch=None) -> None:
        todo = dict(enumerate(requests))
        attempts: Counter[int] = Counter()
        while todo:
            if self._pool is None:
                self._pool = self._start()
            try:
                futures = {self._pool.submit(_perform_in_process, r): i for i, r in todo.items()}
            except BrokenProcessPool:
                logger.warning("a worker process died after its runs had finished; starting new workers")
                self._kill()
                continue
            lost = False
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = futures[future]
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        lost = True
                        continue
                    del todo[i]
                    on_result(i, outcome)
            if lost:
                self._kill()
                for i in todo:
                    attempts[i] += 1
                    if attempts[i] > self.max_retries:
                        raise BioTuneError(
                            f"a worker process died {attempts[i]} times while running {todo[i]}; "
                            "see the log above (out of memory? lower --batch-size or --workers)"
                        )
                logger.warning("a worker process died; submitting its %d unfinished run(s) again", len(todo))

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

    parallel = True

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
        if address is None:
            # A local instance must listen on the loopback address only. Ray does that where it
            # runs single-node (macOS, Windows); this switch asks for the same on Linux. It is
            # read by Ray's processes (environment) and by an already imported ray (constant).
            os.environ[_RAY_LOCAL_ONLY] = "0"
        try:
            import ray
        except ImportError:
            raise BioTuneError("the ray executor needs Ray: pip install 'biotune[ray]'") from None
        if address is None:
            import ray._private.ray_constants as ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        self._ray = ray
        self._owns = False
        if gpus is None:
            gpus = 1.0 if spec.runtime.resolve_device().type == "cuda" else 0.0
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if address is None:
                workers = workers or max(1, (os.cpu_count() or 1) // 2 // threads)
                ray.init(num_cpus=workers * threads, num_gpus=None if gpus else 0, _node_ip_address="127.0.0.1", **kwargs)
            else:
                try:
                    ray.init(address=address, **kwargs)
                except (ConnectionError, RuntimeError, ValueError) as err:
                    raise BioTuneError(f"--ray-address {address!r}: cannot join the Ray cluster ({err})") from None
            self._owns = True
        if workers is None:
            resources = ray.cluster_resources()
            workers = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // threads)
        self.workers = max(1, workers)
        self.threads = threads
        self.max_retries = max_retries
        self._task = ray.remote(_perform_on_ray).options(num_cpus=threads, num_gpus=gpus, max_retries=max_retries)
        self._spec = ray.put(spec)

    def run(self, requests, on_result, on_epoch=None) -> None:
        ray = self._ray
        lost_errors = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError)
        queue = list(enumerate(requests))
        attempts: Counter[int] = Counter()
        in_flight: dict = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < self.workers:
                    i, request = queue.pop(0)
                    in_flight[self._task.remote(self._spec, request, self.threads)] = i
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    i = in_flight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except lost_errors as err:
                        attempts[i] += 1
                        if attempts[i] > self.max_retries:
                            raise BioTuneError(f"Ray lost run {requests[i]} {attempts[i]} times: {err}") from None
                        logger.warning("Ray lost a run (%s); submitting it again", type(err).__name__)
                        queue.append((i, requests[i]))
                        continue
                    except ray.exceptions.RayTaskError as err:
                        raise err.as_instanceof_cause() from None
                    on_result(i, outcome)
        except BaseException:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False


def make_executor(runtime: RuntimeConfig, spec: SessionSpec, session: Session) -> Executor:
    """The executor ``runtime`` asks for; ``session`` serves the local one."""
    if runtime.executor == "local" and runtime.workers_per_device > 1:  # several runs at once on one device
        runtime = dataclasses.replace(runtime, executor="processes", devices=(str(session.finetuner.device),))
    if runtime.executor == "local":
        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        return LocalExecutor(session)
    cores = os.cpu_count() or 1
    if runtime.executor == "processes":
        devices = list(runtime.devices) if runtime.devices else None
        if devices is None:
            device = session.finetuner.device
            if device.type == "cuda" and runtime.workers is None:
                devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            else:
                devices = [str(device)] * (runtime.workers or max(1, cores // 2))
        elif runtime.workers is not None:
            devices = [devices[i % len(devices)] for i in range(runtime.workers)]
        devices = [d for d in devices for _ in range(runtime.workers_per_device)]
        for d in devices:
            dataclasses.replace(runtime, device=d, devices=None).resolve_device()  # a clear error for a bad name
        threads = runtime.threads or max(1, cores // len(devices))
        return ProcessExecutor(spec, devices, threads=threads)
    return RayExecutor(spec, workers=runtime.workers, address=runtime.ray_address, threads=runtime.threads or 1)
