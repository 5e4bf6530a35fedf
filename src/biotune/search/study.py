"""Optuna as the search's store: one trial per evaluation, replayed on resume.

Trials are created through ask-and-tell with enqueued parameters (one float in [0, 1] per
gene), so optuna-dashboard shows a BioTune run like any study. User attributes hold the
generation, slot, role, fold, training seeds and their accuracies, and the time spent. The
study's own user attribute ``config`` holds the run settings, so a study is never resumed
with other settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import BioTuneError
from .evolution import Candidate
from .fitness import Evaluation

__all__ = ["with_driver", "TrialStore", "StoredEvaluation", "gene_names"]

logger = logging.getLogger(__name__)


# Database servers whose SQLAlchemy dialect needs a driver package: the drivers BioTune knows, in
# order of preference, as (SQLAlchemy driver name, module to import, what to pip install).
_DRIVERS = {
    "postgresql": (("psycopg", "psycopg", "'biotune[postgres]' (psycopg 3)"),
                   ("psycopg2", "psycopg2", "psycopg2-binary")),
    "mysql": (("pymysql", "pymysql", "pymysql"), ("mysqldb", "MySQLdb", "mysqlclient")),
}


def with_driver(url: str) -> str:
    """A storage URL with a database driver that is installed.

    SQLAlchemy maps ``postgresql://`` to psycopg2 and ``mysql://`` to mysqlclient whatever is
    installed; ``biotune[postgres]`` installs psycopg 3, so a URL without a driver gets the first
    installed one of :data:`_DRIVERS` (``postgresql+psycopg://``). A named driver is kept.

    Raises:
        BioTuneError: no driver for the URL's database is installed; the message names the
            package to install.
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    dialect, _, driver = scheme.partition("+")
    dialect = "postgresql" if dialect == "postgres" else dialect
    known = _DRIVERS.get(dialect)
    if not sep or known is None:
        return url
    if driver:
        for name, module, package in known:
            if name == driver and importlib.util.find_spec(module) is None:
                raise BioTuneError(f"the {dialect}+{driver} storage needs its database driver: pip install {package}")
        return url
    for name, module, _ in known:
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}+{name}://{rest}"
    raise BioTuneError(f"a {dialect} storage needs a database driver: pip install {known[0][2]}")


def gene_names(block_names: Sequence[str]) -> list[str]:
    """Optuna parameter names: ``"00:conv1+bn1"``, ..., then ``"threshold"``."""
    return [f"{i:02d}:{name}" for i, name in enumerate(block_names)] + ["threshold"]


@dataclass(frozen=True)
class StoredEvaluation:
    """A finished evaluation read back from the study."""

    trial_number: int
    genes: tuple[float, ...]
    generation: int
    slot: int
    role: str
    evaluation: Evaluation


def _diff(stored: Any, current: Any, path: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += _diff(stored.get(key), current.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if stored == current else [f"{path}: {stored!r} -> {current!r}"]


class TrialStore:
    """Reads and writes a run's evaluations in an Optuna study.

    Args:
        storage: an Optuna storage URL (``sqlite:///runs/x/study.db``, ``postgresql://...``).
        study_name: the study's name inside the storage.
        param_names: one name per gene (see :func:`gene_names`).
        config: the run settings; must equal those stored when the study exists.
    """

    def __init__(self, storage: str, study_name: str, param_names: Sequence[str], config: dict[str, Any]) -> None:
        import optuna

        storage = with_driver(storage)
        self._optuna = optuna
        self.param_names = list(param_names)
        self._dists = {n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in self.param_names}
        try:
            self.study = optuna.create_study(
                storage=storage,
                study_name=study_name,
                direction="minimize",
                load_if_exists=True,
                sampler=optuna.samplers.RandomSampler(seed=0),
            )
        except Exception as err:  # SQLAlchemy and driver errors of many kinds
            raise BioTuneError(f"cannot open the study storage ({type(err).__name__}: {err})") from None
        stored = self.study.user_attrs.get("config")
        if stored is None:
            self.study.set_user_attr("config", config)
        else:
            comparable = lambda c: {k: v for k, v in c.items() if k != "biotune_version"}  # noqa: E731
            diff = _diff(comparable(stored), comparable(config))
            if diff:
                raise BioTuneError(
                    f"study {study_name!r} holds a search with other settings ({'; '.join(diff[:5])}); "
                    "use another run directory or study"
                )
        self._abandon_unfinished()

    def _abandon_unfinished(self) -> None:
        """Fail trials left running or waiting by an interrupted process."""
        TrialState = self._optuna.trial.TrialState
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            popped = self.study.ask()
            self.study.tell(popped, state=TrialState.FAIL)
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.study.tell(trial.number, state=TrialState.FAIL)
            logger.info("trial %d was interrupted; it will be evaluated again", trial.number)

    def completed(self) -> dict[tuple[int, int], StoredEvaluation]:
        """Finished evaluations (complete or pruned) keyed by (generation, slot)."""
        TrialState = self._optuna.trial.TrialState
        out = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            a = t.user_attrs
            seeds = tuple(int(s) for s in a["seeds"])
            ev = Evaluation(
                fitness=float(a["fitness"] if "fitness" in a else t.value),
                accuracies=tuple(float(x) for x in a["accuracies"]),
                seeds=seeds,
                fold=int(a["fold"]),
                seconds=float(a.get("seconds", 0.0)),
                trained=int(a.get("trained", len(seeds))),
                diverged_seeds=tuple(int(s) for s in a.get("diverged_seeds", ())),
                failure=a.get("failure"),
                epochs=int(a.get("epochs", 0)),
                images=int(a.get("images", 0)),
                pruned_seeds=tuple(int(s) for s in a.get("pruned_seeds", ())),
                curve=tuple(float(t.intermediate_values[k]) for k in sorted(t.intermediate_values)),
            )
            genes = tuple(float(t.params[n]) for n in self.param_names)
            key = (int(a["generation"]), int(a["slot"]))
            out[key] = StoredEvaluation(t.number, genes, key[0], key[1], a["role"], ev)
        return out

    def start(self, candidate: Candidate, fold: int):
        """Create the running trial of an evaluation about to be trained."""
        params = {n: float(g) for n, g in zip(self.param_names, candidate.genes)}
        self.study.enqueue_trial(
            params,
            user_attrs={
                "generation": candidate.generation,
                "slot": candidate.slot,
                "role": candidate.role,
                "parents": list(candidate.parents),
                "fold": int(fold),
            },
        )
        trial = self.study.ask(self._dists)
        got = np.array([trial.params[n] for n in self.param_names])
        assert np.array_equal(got, np.asarray(candidate.genes)), "enqueued parameters were not used"
        return trial

    def finish(self, trial, evaluation: Evaluation) -> int:
        """Record an evaluation's result and complete (or prune) its trial; returns the trial number.

        The fitness curve goes in as the trial's intermediate values (one step per epoch), so a
        pruned trial shows where it stopped, in optuna-dashboard too.
        """
        for step, value in enumerate(evaluation.curve, start=1):
            trial.report(value, step)
        trial.set_user_attr("seeds", list(evaluation.seeds))
        trial.set_user_attr("accuracies", list(evaluation.accuracies))
        trial.set_user_attr("seconds", evaluation.seconds)
        trial.set_user_attr("trained", evaluation.trained)
        trial.set_user_attr("diverged_seeds", list(evaluation.diverged_seeds))
        trial.set_user_attr("epochs", evaluation.epochs)
        trial.set_user_attr("images", evaluation.images)
        trial.set_user_attr("fitness", evaluation.fitness)
        if evaluation.pruned:
            trial.set_user_attr("pruned_seeds", list(evaluation.pruned_seeds))
            self.study.tell(trial, state=self._optuna.trial.TrialState.PRUNED)
            return trial.number
        if evaluation.failure:
            # Diverged: completed with the worst fitness, so a resumed search reads it back.
            trial.set_user_attr("failure", evaluation.failure)
            logger.warning("trial %d failed: %s (scored %.1f)", trial.number, evaluation.failure, evaluation.fitness)
        self.study.tell(trial, evaluation.fitness)
        return trial.number

    def fail(self, trial, reason: str) -> None:
        trial.set_user_attr("failure", reason)
        self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
