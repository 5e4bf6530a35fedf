"""Multi-fidelity evaluations: Optuna's pruners stop a search run whose curve is poor at a rung.

Each evaluation reports, after every epoch, its fitness so far (1 − the mean over its seeds of
the best validation accuracy reached by then) to its trial; a pruner compares that with the
curves of earlier evaluations and may stop the run there. A pruned evaluation keeps the
fitness it reached (its last reported value), so every strategy ranks it, and its trial is
stored as PRUNED with its intermediate values.

``wilcoxon`` prunes across an evaluation's seeds instead of its epochs: see
:func:`wilcoxon_prunes` and :func:`biotune.search.loop.run_search`.

The decision is Optuna's (``MedianPruner``, ``SuccessiveHalvingPruner``, ``HyperbandPruner``),
but it is taken where the run trains (a worker process or a Ray task), after each epoch,
against a fixed *reference*: the evaluations of the earlier generations. Each run replays that
reference into an in-memory study, trial numbers equal to evaluation indices (so Hyperband's
brackets do not depend on timing), and asks the pruner about its own curve. Evaluations of the
same generation never see each other, which keeps a search deterministic whatever the number of
workers and identical after a resume; the price is that the first generation is never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .._registry import PRUNERS
from ..config import WILCOXON_MIN_SEEDS
from ..errors import BioTuneError

__all__ = ["PRUNERS", "Pruner", "Reference", "PruneCheck", "make_pruner", "fitness_curve", "expected_saving",
           "wilcoxon_prunes", "BY_SEED", "WILCOXON_P", "WILCOXON_MIN_SEEDS"]

_REDUCTION = 3  # successive halving and Hyperband keep the best third at each rung (Optuna's default)
_STUDY = "biotune-pruning"  # Hyperband hashes the study name and trial number into brackets


def make_pruner(name: str, epochs: int):
    """The Optuna pruner ``name`` (a name in :data:`PRUNERS`) for runs of ``epochs`` epochs (one step
    per epoch); ``None`` for ``none``.

    Raises:
        BioTuneError: an unknown name.
    """
    return PRUNERS.get(name)(epochs)


@PRUNERS.register("none", "every run trains its whole epoch budget (the paper's protocol)")
def _none(epochs: int):
    return None


@PRUNERS.register("median", "Optuna's MedianPruner: after 5 complete evaluations, stop a run whose best so far "
                            "is worse than the others' median at that epoch (the default)")
def _median(epochs: int):
    import optuna

    return optuna.pruners.MedianPruner()


@PRUNERS.register("successive-halving", "rungs at epochs 1, 3, 9, …; a run goes on past a rung in the best third")
def _successive_halving(epochs: int):
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=_REDUCTION)


@PRUNERS.register("hyperband", "several successive-halving schedules (brackets) side by side, up to the epochs")
def _hyperband(epochs: int):
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, int(epochs)), reduction_factor=_REDUCTION)


WILCOXON_P = 0.1  # Optuna's default threshold
BY_SEED = ("wilcoxon",)  # pruners that stop an evaluation between its seeds, not between epochs


@PRUNERS.register("wilcoxon", f"Optuna's WilcoxonPruner across an evaluation's seeds: a generation trains seed by "
                              f"seed (all its candidates on the same fold and seeds) and stops a candidate whose "
                              f"runs are worse than the leader's, paired (needs --seeds {WILCOXON_MIN_SEEDS} or more)")
def _wilcoxon(epochs: int):
    import optuna

    return optuna.pruners.WilcoxonPruner(p_threshold=WILCOXON_P)


def wilcoxon_prunes(values: Sequence[float], leader: Sequence[float]) -> bool:
    """Whether Optuna's ``WilcoxonPruner`` stops a candidate whose per-seed fitness values (1 − best
    validation accuracy, lower is better) are ``values``, against the ``leader``'s on the same fold
    and seeds (same order): the leader is the study's best trial, the candidate reports one value
    per seed (step = seed index).

    Example:
        >>> wilcoxon_prunes([0.5, 0.6, 0.55, 0.52], [0.4, 0.45, 0.41, 0.43])
        True
        >>> wilcoxon_prunes([0.5, 0.6, 0.55], [0.4, 0.45, 0.41])  # 3 seeds: p >= 1/8
        False
    """
    import warnings

    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(direction="minimize", pruner=_wilcoxon(0))
        best = study.ask()
        for step, value in enumerate(leader):
            best.report(float(value), step)
        study.tell(best, float(np.mean(leader)))
        trial = study.ask()
        for step, value in enumerate(values):
            trial.report(float(value), step)
        return bool(trial.should_prune())
    finally:
        optuna.logging.set_verbosity(verbosity)


@dataclass(frozen=True)
class Reference:
    """An earlier evaluation as the pruner sees it.

    Attributes:
        index: its place in the search (evaluations of all earlier generations, then slot).
        curve: its fitness after each epoch (see :func:`fitness_curve`).
        pruned: whether it was pruned (complete evaluations count for the median).
    """

    index: int
    curve: tuple[float, ...]
    pruned: bool


def fitness_curve(histories: Sequence[Sequence[float]], pruned: Sequence[bool]) -> tuple[float, ...]:
    """An evaluation's fitness after each epoch: 1 − mean over seeds of the best accuracy so far.

    A run that stopped early (patience) keeps its best; the curve of a pruned evaluation ends at
    the first epoch where one of its runs was pruned, the others' as long as the longest run.

    Example:
        >>> fitness_curve([[0.5, 0.7, 0.6], [0.3]], [False, False])
        (0.6, 0.5, 0.5)
    """
    if not histories or any(len(h) == 0 for h in histories):
        return ()
    best = [np.maximum.accumulate(np.asarray(h, dtype=float)) for h in histories]
    stops = [len(b) for b, p in zip(best, pruned) if p]
    length = min(stops) if stops else max(len(b) for b in best)
    return tuple(round(1.0 - float(np.mean([b[min(step, len(b) - 1)] for b in best])), 12) for step in range(length))


def _replay(pruner_name: str, epochs: int, references: Sequence[Reference], upto: int):
    """An in-memory study holding ``references`` at their indices, padded to ``upto`` trials.

    Each reference reports its curve epoch by epoch with the pruner consulted at each (as it would
    have been live; successive halving records the rungs it reached), then is told complete or
    pruned. Indices with no reference (this generation's other slots, memoised repeats) are failed
    trials, which pruners ignore.
    """
    import optuna

    TrialState = optuna.trial.TrialState
    study = optuna.create_study(direction="minimize", study_name=_STUDY, pruner=make_pruner(pruner_name, epochs),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    by_index = {r.index: r for r in references}
    for number in range(upto):
        trial = study.ask()
        ref = by_index.get(number)
        if ref is None or not ref.curve:
            study.tell(trial, state=TrialState.FAIL)
            continue
        for step, value in enumerate(ref.curve, start=1):
            trial.report(value, step)
            trial.should_prune()  # records the rungs reached; the answer is history
        if ref.pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, ref.curve[-1])
    return study


@dataclass(frozen=True)
class PruneCheck:
    """What one search run needs to ask the pruner after each epoch (small, picklable).

    Attributes:
        pruner: one of :data:`PRUNERS` but ``"none"``.
        epochs: the runs' epoch budget (Hyperband's maximum resource).
        references: the evaluations of the earlier generations.
        index: this evaluation's index.
    """

    pruner: str
    epochs: int
    references: tuple[Reference, ...]
    index: int

    def start(self) -> Callable[[int, float], bool]:
        """A fresh ``should_stop(epoch, best_accuracy_so_far)`` for one run."""
        import optuna

        if any(r.index >= self.index for r in self.references):
            raise BioTuneError("a pruning reference must come before the evaluation it judges")
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "trial finished" lines from the replay
        try:
            study = _replay(self.pruner, self.epochs, self.references, self.index)
            trial = study.ask()
        finally:
            optuna.logging.set_verbosity(verbosity)

        def should_stop(epoch: int, accuracy: float) -> bool:
            trial.report(1.0 - float(accuracy), int(epoch))
            return bool(trial.should_prune())

        return should_stop


def expected_saving(pruner: str, epochs: int, batches: Sequence[int], seeds: int = 1) -> tuple[float, float]:
    """The share of search epochs pruning is expected to save, as a range ``(low, high)``.

    The first generation is never pruned by the epoch pruners. ``high``: every later run stops at the rung its
    pruner's geometry gives on average (successive halving and Hyperband: two thirds stop at
    each rung; median: half stop after the first epoch); ``low``: half of that. Early stopping
    (patience) is ignored on both sides, so this is a guide, not a promise.
    """
    if pruner in BY_SEED:  # wilcoxon: nothing when no candidate is clearly behind; at most the seeds after the 4th
        return 0.0, max(0, seeds - (WILCOXON_MIN_SEEDS - 1)) / seeds
    if pruner == "none" or len(batches) < 2:
        return 0.0, 0.0
    later = sum(batches[1:]) / sum(batches)
    if pruner == "median":
        per_run = 0.5 * (1 - 1 / epochs)
    else:
        # Hyperband: its brackets' successive halving starts at rungs 1, 3, 9, ... (averaged).
        starts = [s for s in range(8) if _REDUCTION**s < epochs] or [0] if pruner == "hyperband" else [0]
        per_run = float(np.mean([_halving_saving(epochs, s) for s in starts]))
    high = later * per_run
    return high / 2, high


def _halving_saving(epochs: int, first: int) -> float:
    """Share of a run's epochs successive halving saves when its rungs start at 3**first."""
    cost, alive = 0.0, 1.0
    for rung in (r for r in (_REDUCTION**k for k in range(first, 8)) if r < epochs):
        cost += alive * (1 - 1 / _REDUCTION) * rung
        alive /= _REDUCTION
    return 1 - (cost + alive * epochs) / epochs


@dataclass(frozen=True)
class Pruner:
    """A search's pruning: which Optuna pruner, for runs of how many epochs.

    Example:
        >>> Pruner("median", 8).checks([], offset=0, size=2)
        [None, None]
    """

    name: str
    epochs: int

    def __post_init__(self) -> None:
        PRUNERS.check(self.name, "pruner")

    @property
    def by_seed(self) -> bool:
        """Whether it stops evaluations between their seeds (:data:`BY_SEED`) rather than between epochs."""
        return self.name in BY_SEED

    def checks(self, references: Sequence[Reference], offset: int, size: int) -> list[PruneCheck | None]:
        """The checks of a batch of ``size`` evaluations whose indices start at ``offset``;
        ``None`` for each when nothing can be pruned (no pruner, or no earlier evaluation)."""
        refs = tuple(r for r in references if r.curve)
        if self.name == "none" or self.by_seed or not refs:
            return [None] * size
        return [PruneCheck(self.name, self.epochs, refs, offset + i) for i in range(size)]
