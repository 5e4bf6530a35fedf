"""The competitors a practitioner would pick, tuned on validation at BioTune's compute.

- ``ftlr``: full fine-tuning whose base learning rate is chosen from a log-spaced grid
  (1e-4 … 1e-2) by mean validation accuracy.
- ``llrd``: layer-wise learning-rate decay (BEiT; AutoGluon's default): the head at ×1 and
  each block below it at ×d more, block b at λ·d^(B−b), with d chosen from a grid the same way.
  Written here rather than through timm's ``param_groups_layer_decay`` because the decay
  runs over BioTune's own blocks (the partition the search tunes, itself from timm's
  ``group_matcher``), so the methods differ only in their per-block multipliers and train
  through the same trainer.
- ``lpft`` (Kumar et al. 2022): a linear probe (head only, features frozen) trained to
  convergence with early stopping on validation, then every block fine-tuned from the probed
  head; both stages together use the epoch budget of FT, at the base learning rate.

Tuning is budget-matched: with ``budget`` training runs (BioTune's search runs at the same
settings), a grid of G values gets ``budget // G`` replicates each; replicate r of every
value trains on the same fold (r mod n_folds) with the same seed, so values are compared on
equal terms. G is the grid size, or the budget itself when it is smaller.

``compare --tune-baselines`` tunes each baseline's own knobs the same way (:func:`tune_baseline`,
grids from :func:`baseline_grid`): at ``ftlr``'s compute, each method at its best.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .._registry import TUNED
from ..config import RunConfig
from ..errors import BioTuneError
from ..search.evolution import batch_sizes
from ..training.regime import Regime
from ..training.session import SEARCH_SEEDS, Compute, RunOutcome, RunRequest, Session, training_seeds
from .baselines import Knobs, default_knobs
from .perform import BaselineRun, perform_baseline

__all__ = ["TUNED", "Tuning", "baseline_grid", "lr_grid", "decay_grid", "llrd_multipliers", "tune", "tune_baseline",
           "lpft"]

LR_RANGE = (1e-4, 1e-2)
DECAYS = (0.5, 0.6, 0.7, 0.8, 0.9)
MAX_LR_POINTS = 7


def lr_grid(budget: int, *, points: int = MAX_LR_POINTS) -> tuple[float, ...]:
    """Log-spaced base learning rates over 1e-4 … 1e-2: ``points`` of them, fewer on a small budget.

    Example:
        >>> [f"{x:.2g}" for x in lr_grid(26)]
        ['0.0001', '0.00022', '0.00046', '0.001', '0.0022', '0.0046', '0.01']
    """
    n = max(1, min(points, int(budget)))
    if n == 1:
        return (1e-3,)
    return tuple(float(x) for x in np.logspace(np.log10(LR_RANGE[0]), np.log10(LR_RANGE[1]), n))


def decay_grid(budget: int) -> tuple[float, ...]:
    """The decay factors d tried (evenly spread over :data:`DECAYS` when the budget is smaller)."""
    n = max(1, min(len(DECAYS), int(budget)))
    idx = np.linspace(0, len(DECAYS) - 1, n).round().astype(int)
    return tuple(DECAYS[i] for i in idx)


def llrd_multipliers(n_blocks: int, decay: float) -> tuple[float, ...]:
    """Per-block LR multipliers d^(depth): the head (last block) ×1, the block below ×d, …

    Example:
        >>> llrd_multipliers(4, 0.5)
        (0.125, 0.25, 0.5, 1.0)
    """
    if not 0.0 < decay <= 1.0:
        raise BioTuneError(f"the layer decay must be in (0, 1], got {decay}")
    return tuple(float(decay ** (n_blocks - 1 - b)) for b in range(n_blocks))


@dataclass(frozen=True)
class Tuning:
    """The outcome of a validation grid search.

    Attributes:
        values: the grid, in order.
        val_accuracy: mean validation accuracy of each value over its replicates.
        chosen: the value with the best mean (the first of equals).
        replicates: runs per value.
        compute: the training all tuning runs consumed.
    """

    values: tuple[Any, ...]
    val_accuracy: tuple[float, ...]
    chosen: Any
    replicates: int
    compute: Compute


def choose(values: Sequence[Any], scores: Sequence[Sequence[float]]) -> tuple[Any, tuple[float, ...]]:
    """The value whose runs have the best mean score (first of equals), and every mean."""
    if not values or len(values) != len(scores):
        raise BioTuneError("a grid search needs one list of scores per value")
    means = tuple(float(np.mean(s)) for s in scores)
    return values[int(np.argmax(means))], means


def tune(
    run: Callable[[Any, int, int], RunOutcome],
    values: Sequence[Any],
    *,
    budget: int,
    n_folds: int,
    seeds: Sequence[int],
) -> Tuning:
    """Grid search of ``values`` on validation with ``budget`` runs (see the module notes).

    Args:
        run: trains one value on a fold with a seed, ``run(value, fold, seed)``.
        seeds: one training seed per replicate (at least ``budget // len(values)``).
    """
    replicates = max(1, int(budget) // len(values))
    if len(seeds) < replicates:
        raise BioTuneError(f"tuning needs {replicates} seeds, got {len(seeds)}")
    scores, outcomes = [], []
    for value in values:
        runs = [run(value, r % n_folds, int(seeds[r])) for r in range(replicates)]
        outcomes += runs
        scores.append([0.0 if o.diverged else o.best_val_accuracy for o in runs])
    chosen, means = choose(values, scores)
    return Tuning(tuple(values), means, chosen, replicates, Compute.of(outcomes))


@dataclass(frozen=True)
class LPFT:
    """LP-FT's outcome: the final (second-stage) run, both stages' compute and the switch epoch."""

    val_accuracy: float
    test_accuracy: float
    probe_epochs: int
    compute: Compute
    failure: str | None


def lpft(session: Session, lr: float, seed: int, *, epochs: int) -> LPFT:
    """Linear probe to convergence, then full fine-tuning from the probed head (``epochs`` in all)."""
    tuner, t = session.finetuner, session.splits
    n = len(session.blocks)
    train, val = t.train, t.val
    probe = tuner.run((0.0,) * (n - 1) + (lr,), train, val, seed, keep_best=True)
    remaining = max(1, epochs - probe.epochs_run)
    ft = tuner.run((lr,) * n, train, val, seed, keep_best=True,
                   regime=Regime(init_state=probe.best_state, epochs=remaining))
    test = tuner.evaluate(*t.test, state=ft.best_state) if ft.best_state else 0.0
    return LPFT(ft.best_val_accuracy, float(test), probe.epochs_run, Compute.of([probe, ft]),
                ft.failure or probe.failure)


def _grid_tuned(session: Session, config: RunConfig, seed: int, final_seed: int, *, budget_match: bool,
                grid: tuple[float, ...], lrs_of) -> dict:
    """A validation grid search at BioTune's search budget (or one run per value), then a final run."""
    s = config.search
    budget = _search_runs(config) if budget_match else len(grid)
    seeds = training_seeds(seed, SEARCH_SEEDS, max(1, budget // len(grid)))
    run = lambda value, fold, seed: session.perform(RunRequest(tuple(lrs_of(value)), fold, seed))  # noqa: E731
    tuning = tune(run, grid, budget=budget, n_folds=s.n_folds, seeds=seeds)
    outcome = session.perform(RunRequest(tuple(lrs_of(tuning.chosen)), None, final_seed))
    return {
        "val_accuracy": outcome.best_val_accuracy, "test_accuracy": float(outcome.test_accuracy or 0.0),
        "failure": outcome.failure, "chosen": tuning.chosen, "grid": list(grid),
        "grid_val_accuracy": list(tuning.val_accuracy), "replicates": tuning.replicates,
        "compute": (tuning.compute + Compute.of([outcome])).to_dict(), "search_compute": tuning.compute.to_dict(),
    }


def _search_runs(config: RunConfig) -> int:
    s = config.search
    return sum(batch_sizes(s.population, s.elites, s.generations)) * s.seeds


@TUNED.register("ftlr", "FT with its learning rate tuned on validation, with as many runs as the search")
def _ftlr(session: Session, config: RunConfig, seed: int, final_seed: int, *, budget_match: bool) -> dict:
    n = len(session.blocks)
    return _grid_tuned(session, config, seed, final_seed, budget_match=budget_match,
                       grid=lr_grid(_search_runs(config)), lrs_of=lambda lr: (lr,) * n)


@TUNED.register("llrd", "layer-wise LR decay (BEiT, timm): the decay d tuned on validation")
def _llrd(session: Session, config: RunConfig, seed: int, final_seed: int, *, budget_match: bool) -> dict:
    n, lr = len(session.blocks), config.train.lr
    return _grid_tuned(session, config, seed, final_seed, budget_match=budget_match,
                       grid=decay_grid(_search_runs(config)),
                       lrs_of=lambda d: tuple(lr * m for m in llrd_multipliers(n, d)))


@TUNED.register("lpft", "linear probe to convergence, then full fine-tuning (Kumar et al. 2022)")
def _lpft(session: Session, config: RunConfig, seed: int, final_seed: int, *, budget_match: bool) -> dict:
    t = config.train
    out = lpft(session, t.lr, final_seed, epochs=t.epochs)
    return {"val_accuracy": out.val_accuracy, "test_accuracy": out.test_accuracy, "failure": out.failure,
            "probe_epochs": out.probe_epochs, "compute": out.compute.to_dict()}


#: A tuned baseline moves its rate by these factors around its default (two-knob methods).
RATE_FACTORS = (1 / 3, 1.0, 3.0)
#: ... and its second knob by these: -SP's α, LoRA's rank (alpha = rank), gradual unfreezing's pace.
SECOND_KNOB = {"l1sp": ("alpha", (0.1, 1.0, 10.0)), "l2sp": ("alpha", (0.1, 1.0, 10.0)),
               "lora": ("rank", (4, 16)), "glf": ("pace", (1 / 3, 2 / 3)), "gfl": ("pace", (1 / 3, 2 / 3))}


def baseline_grid(method: str, budget: int) -> tuple[Knobs, ...]:
    """The knobs a tuned baseline tries, around its defaults, at most ``budget`` of them.

    One-knob methods (FT, LP, AutoRGN: the rate) try up to 7 rates over ×0.1 … ×10 of the
    default (FT's grid is then :func:`lr_grid`'s at λ = 1e-3); the others try
    :data:`RATE_FACTORS` × their second knob (:data:`SECOND_KNOB`: α ×0.1/×1/×10, LoRA rank
    4 or 16, unfreezing pace ⅓ or ⅔). A budget smaller than the grid keeps evenly spread
    entries, the defaults among them.

    Example:
        >>> [k.lr_scale for k in baseline_grid("autorgn", 3)]
        [1.0, 10.0, 100.0]
        >>> len(baseline_grid("l1sp", 26)), len(baseline_grid("lora", 26))
        (9, 6)
    """
    d = default_knobs(method)
    if method in SECOND_KNOB:
        name, values = SECOND_KNOB[method]
        grid = []
        for v in values:
            knob = {"alpha": d.alpha * v} if name == "alpha" else (
                {"rank": v, "lora_alpha": float(v)} if name == "rank" else {"pace": v})
            grid += [d.replace(lr_scale=d.lr_scale * f, **knob) for f in RATE_FACTORS]
    else:
        n = max(1, min(MAX_LR_POINTS, int(budget)))
        factors = np.logspace(-1, 1, n) if n > 1 else np.ones(1)
        grid = [d.replace(lr_scale=float(d.lr_scale * f)) for f in factors]
    if len(grid) <= budget:
        return tuple(grid)
    keep = sorted(set(np.linspace(0, len(grid) - 1, max(1, int(budget))).round().astype(int).tolist()))
    chosen = [grid[i] for i in keep]
    if d not in chosen:  # the defaults always among the values tried
        chosen[len(chosen) // 2] = d
    return tuple(chosen)


def tune_baseline(session: Session, config: RunConfig, method: str, seed: int, final_seed: int, *,
                  kernels_only: bool = False) -> tuple[BaselineRun, Compute]:
    """A baseline with its own knobs chosen on validation with ``ftlr``'s runs, then its final run.

    The grid (:func:`baseline_grid`) is searched with as many training runs as BioTune's search
    makes, on its folds and seeds (:func:`tune`); the chosen knobs train on all training data.
    Returns the final run (its details hold the choice and the grid with its validation
    accuracies) and the tuning runs' compute.
    """
    budget = _search_runs(config)
    grid = baseline_grid(method, budget)
    seeds = training_seeds(seed, SEARCH_SEEDS, max(1, budget // len(grid)))

    def run(knobs: Knobs, fold: int, run_seed: int) -> RunOutcome:
        return perform_baseline(session, config, method, knobs, fold, run_seed, kernels_only=kernels_only).outcome

    tuning = tune(run, grid, budget=budget, n_folds=config.search.n_folds, seeds=seeds)
    final = perform_baseline(session, config, method, tuning.chosen, None, final_seed, kernels_only=kernels_only)
    details = {**final.details, "knobs": tuning.chosen.to_dict(),
               "grid": [k.to_dict() for k in grid], "grid_val_accuracy": list(tuning.val_accuracy),
               "replicates": tuning.replicates, "search_compute": tuning.compute.to_dict()}
    return BaselineRun(final.outcome, final.trainable_percent, details), tuning.compute
