"""What a search costs and what it may spend: its time estimate (the evaluations its strategy makes
per generation and the runs of its final phase, scaled from a measured training speed, see
:mod:`biotune.training.estimate`) and the time limit (:class:`TimeBudget`) that stops a search on it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..config import RunConfig, RuntimeConfig
from ..errors import BioTuneError
from ..training.estimate import Estimate, Speed, estimate_runs, format_seconds, measure_speed, rounds
from ..training.executor import parallel_runs, run_threads
from ..training.memory import apply_fit, memory_needs
from ..training.session import Session
from .evolution import batch_sizes
from .genome import leading_frozen_distribution
from .pruning import expected_saving

__all__ = ["estimate_search", "TimeBudget"]


def estimate_search(session: Session, config: RunConfig, runtime: RuntimeConfig, speed: Speed | None = None,
                    *, final_seeds: int | None = None, workers: int | None = None) -> Estimate:
    """The whole search and its top-k final phase (``final_seeds`` per candidate, default the config's),
    on ``workers`` runs at once (default: what the runtime's executor really runs at once)."""
    device = str(session.device)
    workers = parallel_runs(runtime, device) if workers is None else workers
    threads = run_threads(runtime, device)
    # Memory first: measured after the speed steps, the heap they leave behind inflated the step's
    # figures (EfficientNet-Lite0 at 224 px: 83 MB per image against 73, evaluation 31 against 11).
    remote = runtime.executor == "ray" and runtime.ray_address is not None
    sessions = 1 if (runtime.executor == "local" and workers == 1) or remote else 1 + workers  # on this machine
    memory = memory_needs(session, runtime, sessions, limit=runtime.memory_limit_bytes)
    # timed with what a memory limit chose: plain steps of the full batch would break the limit here
    # (Lite0 at 224 px under --memory-limit 4G: 6.0 GB) and time the runs at the wrong speed
    speed = speed or measure_speed(session, apply_fit(runtime, memory.fit), threads=threads,
                                   leading_frozen=leading_frozen_distribution(len(session.blocks),
                                                                              head=config.search.train_head))
    local_cpu = device == "cpu" and not (runtime.executor == "ray" and runtime.ray_address)
    if local_cpu and workers > 1:  # more runs at once than this machine has cores: each runs slower
        share = max(1.0, workers * (threads or 1) / (os.cpu_count() or 1))
        speed = dataclasses.replace(speed, train=speed.train * share, eval=speed.eval * share,
                                    search_train=speed.search_train * share)
    s, t = config.search, config.train
    batches = batch_sizes(s.population, s.elites, s.generations)
    fold = session.splits.largest_fold

    def price(cfg: RunConfig, fold_images: int) -> Estimate:
        cs, ct = cfg.search, cfg.train
        cb = batch_sizes(cs.population, cs.elites, cs.generations)
        return estimate_runs(
            speed, runs=cs.final_runs_planned if final_seeds is None or cs.final == "race" else cs.top_k * final_seeds,
            train_images=len(session.splits.x_train), val_images=len(session.splits.x_val),
            test_images=len(session.splits.x_test), epochs=ct.epochs, patience=ct.patience, workers=workers,
            evaluations=sum(cb), search_batches=[b * cs.seeds for b in cb], search_runs=sum(cb) * cs.seeds,
            search_train_images=fold_images,
        )

    estimate = price(config, fold)
    estimate = dataclasses.replace(estimate, advice=_advice(config, estimate, price, fold, device))
    estimate = dataclasses.replace(estimate, memory=memory)
    if s.pruner == "none":
        return estimate
    low, high = expected_saving(s.pruner, t.epochs, batches, s.seeds)
    search = estimate.search_rounds * np.asarray(estimate.round_seconds)  # (low, high) seconds of the search
    why = ("runs stop between seeds, after the 4th at the earliest" if s.pruner == "wilcoxon"
           else "the first generation is never pruned")
    note = (f"pruning ({s.pruner}): expected to save {100 * low:.0f}–{100 * high:.0f}% of the search's training "
            f"epochs ({why}), about {format_seconds(low * search[1])} – "
            f"{format_seconds(high * search[1])} of the time above")
    return dataclasses.replace(estimate, notes=estimate.notes + (note,))


def _advice(config: RunConfig, estimate: Estimate, price, fold: int, device: str) -> tuple[str, ...]:
    """What would shorten the job, each priced like the plan; only changes that change something."""
    from ..config import PRESETS

    span = lambda e: f"{format_seconds(e.low)} – {format_seconds(e.high)}"  # noqa: E731
    out = []
    try:
        quick = config.replace(**PRESETS["quick"])
    except BioTuneError:  # the preset's settings do not go with the others (e.g. its 1 seed with --pruner wilcoxon)
        quick = config
    if quick.to_dict() != config.to_dict():
        priced = price(quick, fold)
        if priced.high < 0.9 * estimate.high:
            out.append(f"--preset quick: about {span(priced)}")
    s = config.search
    if s.fraction > 0.1:
        smaller = round(s.fraction / 2, 3)
        priced = price(config.replace(search={"fraction": smaller}), max(1, int(fold * smaller / s.fraction)))
        out.append(f"--fraction {smaller:g} (now {s.fraction:g}: the search trains on half as many images): "
                   f"about {span(priced)}")
    half = estimate.high / 2
    out.append(f"--time-limit {format_seconds(half).replace(' ', '')}: the search stops when its next generation and "
               f"the final phase would not fit (its first generation always runs) and delivers the best it has")
    if device == "cpu":
        out.append("a GPU (--device cuda)")
    return tuple(out)


@dataclass
class TimeBudget:
    """A wall-time limit for a search and its final phase, judged on the plan's estimate.

    Before each generation after the first, the search asks :meth:`allows`: the next
    generation (its runs in whole rounds of the executor's workers) plus the final phase
    must fit in what is left, or the search stops and finishes with the best it has. A
    round's length is the estimate's until a generation has run, then the slowest round
    measured so far; the final phase is the estimate's full budget (every run to its last
    epoch) scaled by how the measured rounds compare with the estimated ones, never below
    the estimate's earliest stop. The first generation always runs. Within a later generation,
    :meth:`may_start` is asked before each run, so a generation that runs longer than its
    estimate is cut short (its runs not started are left to a resume) rather than overrun.

    Args:
        limit: seconds for the search and its final phase, from ``start``.
        estimate: the plan (:func:`estimate_search`) of the same search and executor.
        generation_runs: training runs of each generation (evaluations × seeds).
        start: ``time.perf_counter()`` when the limit began.
    """

    limit: float
    estimate: Estimate
    generation_runs: tuple[int, ...]
    start: float = field(default_factory=time.perf_counter)
    observed_round: float = 0.0

    def observe(self, generation: int, seconds: float) -> None:
        """Record how long ``generation`` took (its rounds, measured)."""
        n = rounds(self.generation_runs[generation], self.estimate.workers)
        if n:
            self.observed_round = max(self.observed_round, seconds / n)

    def _final(self) -> float:
        low, high = self.estimate.final_seconds
        estimated_round = self.estimate.round_seconds[1]
        if not self.observed_round or not estimated_round:
            return high
        return max(low, min(high, high * self.observed_round / estimated_round))

    def allows(self, generation: int) -> bool:
        """Whether ``generation`` and the final phase still fit."""
        if generation == 0 or generation >= len(self.generation_runs):
            return True
        round_seconds = self.observed_round or self.estimate.round_seconds[1]
        needed = rounds(self.generation_runs[generation], self.estimate.workers) * round_seconds + self._final()
        return time.perf_counter() - self.start + needed <= self.limit

    def may_start(self) -> bool:
        """Whether one more run (the slowest round measured, else the estimate's full run) and the
        final phase still fit: asked before each run of a generation after the first, so the
        limit is kept to within one run's length even when a generation takes longer than planned."""
        run = self.observed_round or self.estimate.round_seconds[1]
        return time.perf_counter() - self.start + run + self._final() <= self.limit

    def final_runs_that_fit(self, planned: int) -> int:
        """Final runs (of ``planned``) that fit what is left, at least 1: the final phase shrinks to the limit."""
        if planned <= 0:
            return 0
        per_run = self._final() / planned
        left = self.limit - (time.perf_counter() - self.start)
        return max(1, min(planned, int(left // per_run) if per_run > 0 else planned))

    def minimum(self) -> float:
        """The least a limit must allow: one search evaluation and one final run, each to its last epoch."""
        final_runs = max(1, self.estimate.final_runs)
        return self.estimate.round_seconds[1] + self.estimate.final_seconds[1] / final_runs

    def check(self) -> None:
        """Refuse a limit below :meth:`minimum`, naming it."""
        if self.limit < self.minimum():
            raise BioTuneError(f"--time-limit {format_seconds(self.limit)} is below what one search evaluation and "
                               f"one final run need here: at least {format_seconds(self.minimum())} "
                               "(or a smaller --fraction, --epochs or --image-size)")

    def fitting_generations(self) -> int:
        """Generations that fit the limit by the estimate alone (for the plan)."""
        used, n = self.estimate.final_seconds[1], 0
        for runs in self.generation_runs:
            used += rounds(runs, self.estimate.workers) * self.estimate.round_seconds[1]
            if n and used > self.limit:
                break
            n += 1
        return n

    def line(self) -> str:
        e = self.estimate
        final = e.final_seconds[1]
        first = rounds(self.generation_runs[0], e.workers) * e.round_seconds[1] if self.generation_runs else 0.0
        if first + final <= self.limit:
            leaves = (f"{self.fitting_generations()} of {len(self.generation_runs)} generations and all "
                      f"{e.final_runs} final runs fit")
        else:
            per_round = e.round_seconds[1] or 1.0
            per_final = final / max(1, e.final_runs)
            final_fit = max(1, min(e.final_runs, int(max(0.0, self.limit - per_round) // per_final)))
            first_fit = max(1, int(max(0.0, self.limit - final_fit * per_final) // per_round) * max(1, e.workers))
            leaves = (f"about {min(first_fit, self.generation_runs[0])} of the first generation's "
                      f"{self.generation_runs[0]} runs and {final_fit} of {e.final_runs} final runs fit")
        return (f"time limit: {format_seconds(self.limit)} for the search and its final phase: by the estimate "
                f"{leaves} (pessimistic: every run to its last epoch; the search re-judges on measured times)")
