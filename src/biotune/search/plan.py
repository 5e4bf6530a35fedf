"""A search's plan and its time estimate: the evaluations its strategy makes per generation,
the runs of its final phase, scaled from a measured training speed (see
:mod:`biotune.training.estimate`)."""

from __future__ import annotations

from ..config import RunConfig, RuntimeConfig
from ..training.estimate import Estimate, Speed, estimate_runs, measure_speed
from ..training.executor import parallel_runs, run_threads
from ..training.session import Session
from .evolution import batch_sizes

__all__ = ["estimate_search"]


def estimate_search(session: Session, config: RunConfig, runtime: RuntimeConfig, speed: Speed | None = None,
                    *, final_seeds: int | None = None, workers: int | None = None) -> Estimate:
    """The whole search and its top-k final phase (``final_seeds`` per candidate, default the config's),
    on ``workers`` runs at once (default: what the runtime's executor really runs at once)."""
    device = str(session.finetuner.device)
    workers = parallel_runs(runtime, device) if workers is None else workers
    speed = speed or measure_speed(session, runtime, threads=run_threads(runtime, device))
    s, t = config.search, config.train
    batches = batch_sizes(s.population, s.elites, s.generations)
    evaluations = sum(batches)
    n_train = len(session.tensors["x_train"])
    fold = max(len(f) for f in session.folds) if session.folds else n_train
    return estimate_runs(
        speed, runs=s.top_k * (s.final_runs if final_seeds is None else final_seeds), train_images=n_train,
        val_images=len(session.tensors["x_val"]), test_images=len(session.tensors["x_test"]),
        epochs=t.epochs, patience=t.patience, workers=workers,
        evaluations=evaluations, search_batches=[b * s.seeds for b in batches],
        search_runs=evaluations * s.seeds, search_train_images=fold,
    )
