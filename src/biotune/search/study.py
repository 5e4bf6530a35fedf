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

__all__ = ["with_driver", "TrialStore", "StoredEvaluation", "gene_names", "settings_diff"]

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


def settings_diff(stored: Any, current: Any, path: str = "") -> list[str]:
    """Where two nested settings documents differ: ``["train.epochs: 4 -> 8", ...]``."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += settings_diff(stored.get(key), current.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if stored == current else [f"{path}: {stored!r} -> {current!r}"]


# An evaluation's fields kept as trial user attributes (the fold is written when the trial starts, the
# curve as intermediate values); pruned_seeds, failure and the memory peaks only when set. The one place their names live.
_STORED = ("seeds", "accuracies", "seconds", "trained", "diverged_seeds", "epochs", "images", "fitness",
           "pruned_seeds", "failure", "ram_peak", "device_peak")


def _evaluation_attrs(evaluation: Evaluation) -> dict[str, Any]:
    """The user attributes of a finished evaluation's trial (JSON values)."""
    out = {}
    for name in _STORED:
        value = getattr(evaluation, name)
        if name in ("pruned_seeds", "failure", "ram_peak", "device_peak") and not value:
            continue
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _evaluation_from(attrs: dict[str, Any], value: float | None, curve: tuple[float, ...]) -> Evaluation:
    """An evaluation read back from its trial's attributes (older studies lack some: their defaults)."""
    seeds = tuple(int(s) for s in attrs["seeds"])
    return Evaluation(
        fitness=float(attrs["fitness"] if "fitness" in attrs else value),
        accuracies=tuple(float(x) for x in attrs["accuracies"]),
        seeds=seeds,
        fold=int(attrs["fold"]),
        seconds=float(attrs.get("seconds", 0.0)),
        trained=int(attrs.get("trained", len(seeds))),
        diverged_seeds=tuple(int(s) for s in attrs.get("diverged_seeds", ())),
        failure=attrs.get("failure"),
        epochs=int(attrs.get("epochs", 0)),
        images=int(attrs.get("images", 0)),
        pruned_seeds=tuple(int(s) for s in attrs.get("pruned_seeds", ())),
        curve=curve,
        ram_peak=int(attrs.get("ram_peak", 0)),
        device_peak=int(attrs.get("device_peak", 0)),
    )


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
            diff = settings_diff(comparable(stored), comparable(config))
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
            ev = _evaluation_from(a, t.value, tuple(float(t.intermediate_values[k]) for k in sorted(t.intermediate_values)))
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
        for name, value in _evaluation_attrs(evaluation).items():
            trial.set_user_attr(name, value)
        if evaluation.pruned:
            self.study.tell(trial, state=self._optuna.trial.TrialState.PRUNED)
            return trial.number
        if evaluation.failure:
            # Diverged: completed with the worst fitness, so a resumed search reads it back.
            logger.warning("trial %d failed: %s (scored %.1f)", trial.number, evaluation.failure, evaluation.fitness)
        self.study.tell(trial, evaluation.fitness)
        return trial.number

    def fail(self, trial, reason: str) -> None:
        trial.set_user_attr("failure", reason)
        self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
