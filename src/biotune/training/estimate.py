"""How long a job will take, measured before it starts: a few real training and evaluation
steps at the resolved settings on the resolved device, scaled to the job's plan.

The range's upper end is the epoch budget of every run (early stopping can only shorten
it); the lower end has every run stop as early as its patience allows. The frozen-prefix
cache and the memo make real runs cheaper still, so the real time can fall below the range
when many configurations freeze leading blocks.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..config import RuntimeConfig
from .groups import set_trainable
from .prefix import bypass
from .session import Session

__all__ = ["Speed", "Estimate", "measure_speed", "estimate_runs", "LONG_ON_CPU", "format_seconds", "rounds"]

LONG_ON_CPU = 3600.0  # seconds: past this a CPU run gets advice on how to cut it


@dataclass(frozen=True)
class Speed:
    """Measured seconds per training image (forward, backward, Adam step) and per evaluated image.

    Attributes:
        train: full fine-tuning (every block trains).
        eval: evaluation.
        device: where it was measured.
        search_train: a run of the search's prior (each gene U[0, 1]) on average: its leading
            frozen blocks are read from the frozen-prefix cache and get no backward pass, so
            most runs cost less than full fine-tuning (0: not measured, priced as ``train``).
    """

    train: float
    eval: float
    device: str
    search_train: float = 0.0

    @property
    def run_train(self) -> float:
        """Seconds per training image of a searched configuration (the prior's mean)."""
        return self.search_train or self.train


@dataclass(frozen=True)
class Estimate:
    """A job's plan and its wall-time range.

    Attributes:
        evaluations: search evaluations planned (0 for plain runs).
        search_runs, final_runs: training runs of the search and of the final phase.
        epochs, patience: epoch budget and early-stopping patience of each run.
        low, high: estimated wall seconds (earliest stop of every run, full budget).
        speed: the measurement it is scaled from.
        workers: runs trained at once.
        search_rounds, final_rounds: rounds of ``workers`` runs the search and the final
            phase take (a generation waits for its last run).
        round_seconds: (low, high) seconds of one round of search runs.
        final_seconds: (low, high) seconds of the whole final phase.
        notes: further lines the plan prints (e.g. the expected saving of pruning).
        memory: what the job needs in disk, RAM and device memory (:mod:`biotune.training.memory`).
        epoch_images: training images of one epoch of a search run and of a final run.
        advice: what would make the job shorter, each with its own estimate (the planner's, which
            knows the settings; only changes that change something).
    """

    evaluations: int
    search_runs: int
    final_runs: int
    epochs: int
    patience: int
    low: float
    high: float
    speed: Speed
    workers: int = 1
    search_rounds: int = 0
    final_rounds: int = 0
    round_seconds: tuple[float, float] = (0.0, 0.0)
    final_seconds: tuple[float, float] = (0.0, 0.0)
    notes: tuple[str, ...] = ()
    memory: Any = None
    epoch_images: tuple[int, int] = (0, 0)
    advice: tuple[str, ...] = ()

    def __add__(self, other: "Estimate") -> "Estimate":
        return Estimate(self.evaluations + other.evaluations, self.search_runs + other.search_runs,
                        self.final_runs + other.final_runs, max(self.epochs, other.epochs),
                        max(self.patience, other.patience), self.low + other.low, self.high + other.high,
                        self.speed, max(self.workers, other.workers), self.search_rounds + other.search_rounds,
                        self.final_rounds + other.final_rounds)

    @property
    def long_on_cpu(self) -> bool:
        return self.speed.device == "cpu" and self.high > LONG_ON_CPU

    def lines(self) -> list[str]:
        """What the command line prints."""
        out = [
            f"plan: {self.evaluations} search evaluations ({self.search_runs} training runs) + {self.final_runs} "
            f"final runs, at most {self.epochs} epochs each (early stopping after {self.patience} without improvement)",
            f"measured on {self.speed.device}: {1e3 * self.speed.train:.2f} ms per training image, "
            f"{1e3 * self.speed.eval:.2f} ms per evaluated image",
            f"estimated wall time: {format_seconds(self.low)} – {format_seconds(self.high)}"
            + (f" with {self.workers} runs at once ({self.search_rounds} rounds of search runs, "
               f"{self.final_rounds} of final runs)" if self.workers > 1 else ""),
        ]
        out += list(self.notes)
        if self.memory is not None:
            out += self.memory.lines()
            problem = self.memory.problem()
            if problem:
                out.append(f"will not fit: {problem}")
        if self.long_on_cpu:
            out.append("this can take more than an hour on the CPU; to cut it: "
                       + "; ".join(self.advice or ("a GPU (--device cuda)", "a smaller --image-size")))
        return out


def format_seconds(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``3.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def measure_speed(session: Session, runtime: RuntimeConfig, *, steps: int = 3, threads: int | None = None,
                  leading_frozen: dict[int, float] | None = None) -> Speed:
    """Time ``steps`` training steps of full fine-tuning and one evaluation batch, after a warm-up,
    with ``runtime``'s gradient checkpointing and evaluation batch (what a memory limit chose, so
    that the measurement keeps to the limit too and times the runs as they will train).

    Works on a copy of the session's model, so the session is left as it was. Full
    fine-tuning is the dearest step a run can take: every block trains. ``threads``: the
    intra-op threads each run of the executor gets (a worker with 1 thread is slower than
    this process with all of them). ``leading_frozen``: the share of a search's runs with d
    leading frozen blocks (its prior, from the search); given, the mean cost of such runs is
    timed too (:attr:`Speed.search_train`).
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(session, runtime, steps, leading_frozen)
    finally:
        torch.set_num_threads(previous)


def _measure(session: Session, runtime: RuntimeConfig, steps: int, leading_frozen: dict[int, float] | None) -> Speed:
    tuner = session.finetuner
    model = copy.deepcopy(tuner.model).train()
    if hasattr(model, "set_grad_checkpointing"):  # as the runs will train: a memory limit may have chosen it
        model.set_grad_checkpointing(runtime.grad_checkpointing)
    device = tuner.device
    x, y = session.splits.x_train, session.splits.y_train
    batch = min(tuner.batch_size, len(x))
    eval_batch = min(runtime.eval_batch_size or tuner.eval_batch_size, len(session.splits.x_val))
    xb, yb = x[:batch], y[:batch]
    xv = session.splits.x_val[:eval_batch]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if runtime.amp and device.type == "cuda"
                else nullcontext())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    train = _seconds_per_image(model, xb, yb, optimizer, loss_fn, autocast, sync, steps)
    model.eval()
    with torch.no_grad(), autocast:
        model(xv)
        sync()
        start = time.perf_counter()
        model(xv)
        sync()
    evaluate = (time.perf_counter() - start) / eval_batch
    search_train = (_prior_train(session, model, xb, yb, loss_fn, autocast, sync, train, leading_frozen)
                    if leading_frozen else 0.0)
    return Speed(train, evaluate, device.type, search_train)


def _seconds_per_image(model: nn.Module, x, y, optimizer, loss_fn, autocast, sync, steps: int) -> float:
    """Seconds per image of ``steps`` training steps on the batch ``(x, y)``, after one warm-up
    step (allocation, kernel selection)."""
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / (steps * len(x))


_PRIOR_MASS = 0.95  # depths are timed, most likely first, until they cover this much of the prior


def _prior_train(session: Session, model: nn.Module, xb, yb, loss_fn, autocast, sync, full: float,
                 distribution: dict[int, float]) -> float:
    """Mean seconds per training image over the prior's configurations, by their leading frozen
    blocks: each depth is timed as a run trains it (the prefix's cached output as input, no
    gradients below it); the remaining mass of the prior gets the deepest depth timed.

    Runs with frozen blocks after a trainable one are timed as their leading depth (their
    weight gradients are few; the backward pass still runs through them).
    """
    tuner = session.finetuner
    blocks = session.blocks
    times: dict[int, float] = {0: full}
    covered = distribution.get(0, 0.0)
    for depth, mass in sorted(distribution.items(), key=lambda kv: -kv[1]):
        if covered >= _PRIOR_MASS:
            break
        if depth in times:
            continue
        mask = [b >= depth for b in range(len(blocks))]
        cut = tuner.cache.cut_for(mask, xb)
        with torch.no_grad():
            inputs = tuner.cache.output(cut, xb).detach() if cut is not None else xb
        set_trainable(model, blocks, mask)  # as a run sets it: no gradients, eval mode below the depth
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        with bypass(model, cut):
            times[depth] = _seconds_per_image(model, inputs, yb, optimizer, loss_fn, autocast, sync, 1)
        covered += mass
    deepest = times[max(times)]
    return sum(mass * times.get(depth, deepest) for depth, mass in distribution.items())


def _run_seconds(speed: Speed, train_images: int, val_images: int, epochs: int, test_images: int = 0) -> float:
    return epochs * (train_images * speed.run_train + val_images * speed.eval) + test_images * speed.eval


def rounds(runs: int, workers: int) -> int:
    """Rounds that ``runs`` runs take on ``workers`` workers: 6 runs on 4 workers are 2, not 1.5."""
    return -(-runs // max(1, workers))


def estimate_runs(speed: Speed, *, runs: int, train_images: int, val_images: int, test_images: int,
                  epochs: int, patience: int, workers: int = 1, evaluations: int = 0, search_runs: int = 0,
                  search_train_images: int = 0, search_batches: Sequence[int] | None = None) -> Estimate:
    """The range for ``search_runs`` runs on ``search_train_images`` plus ``runs`` final runs.

    With ``workers`` runs at once, each batch of runs (``search_batches``: the runs of each
    generation, which waits for all of them; default one batch) takes whole rounds, and so
    does the final phase.
    """
    workers = max(1, workers)
    batches = [search_runs] if search_batches is None else list(search_batches)
    search_rounds = sum(rounds(b, workers) for b in batches if b)
    final_rounds = rounds(runs, workers)
    early = min(epochs, patience + 1)
    round_seconds = (_run_seconds(speed, search_train_images, val_images, early),
                     _run_seconds(speed, search_train_images, val_images, epochs))
    final_seconds = (final_rounds * _run_seconds(speed, train_images, val_images, early, test_images),
                     final_rounds * _run_seconds(speed, train_images, val_images, epochs, test_images))
    low = search_rounds * round_seconds[0] + final_seconds[0]
    high = search_rounds * round_seconds[1] + final_seconds[1]
    return Estimate(evaluations, search_runs, runs, epochs, patience, low, high, speed, workers,
                    search_rounds, final_rounds, round_seconds, final_seconds,
                    epoch_images=(search_train_images, train_images))
