"""What a search and a fine-tune deliver, as frozen records: :class:`SearchOutcome` (the content of
``best.json``, one field per key), :class:`FinetuneOutcome` (``biotune finetune``'s result). The
files are written from these records (``to_dict``) with the keys they always had, so existing run
directories still resume and load; the command line and the Python API read the fields, not keys.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ._files import write_json
from .models.blocks import Block
from .search.final import RACED, FinalResult

__all__ = ["CandidateOutcome", "SearchStop", "SearchOutcome", "FinetuneOutcome"]


def _plain(value: Any) -> Any:
    """A record's value as JSON: tuples as lists, nested records as dicts."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class _Record:
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class CandidateOutcome(_Record):
    """One configuration of the final phase: its search estimate and its final runs' means.

    In a race, ``label`` names plain FT (which has no search estimate: ``fitness`` None, 0 runs),
    ``dropped_at`` the epoch where the racer was dropped (its scores are those it had reached) and
    ``curve`` its validation accuracy per epoch.
    """

    genes: tuple[float, ...]
    threshold: float
    fitness: float | None
    search_runs: int
    val_accuracy: float
    test_accuracy: float
    trainable_percent: float
    chosen: bool
    label: str = ""
    dropped_at: int | None = None
    curve: tuple[float, ...] = ()


@dataclass(frozen=True)
class SearchStop(_Record):
    """Why the search ended where it did (``stopped_by``: ``"generations done"`` or the time limit) and what
    it ran."""

    stopped_by: str
    generations_done: int
    generations_planned: int
    time_limit_seconds: float | None
    pruner: str
    evaluations_pruned: int
    evaluations: int


@dataclass(frozen=True)
class SearchOutcome(_Record):
    """A search's result: the chosen configuration, how it was chosen, what it scored and cost.

    Attributes:
        genes, threshold: the chosen genome (block genes, then the freeze threshold ε_f).
        blocks: the per-block table (name, trainable, LR multiplier and rate, parameters).
        candidates: the final phase's configurations, in ranking order, one ``chosen``.
        fitness: the chosen configuration's mean search fitness Φ.
        test_accuracy_mean, test_accuracy_se, test_accuracies: its final runs on test.
        compute: training runs, epochs, images and seconds of the search, final phase and both.
        search_stop: why the search ended (:class:`SearchStop`).
        model_dir: the delivered model folder.
    """

    genes: tuple[float, ...]
    threshold: float
    blocks: tuple[dict, ...]
    strategy: str
    metric: str
    selected_by: str
    candidates: tuple[CandidateOutcome, ...]
    fitness: float | None
    val_accuracy_search: float | None
    initial_population_mean_fitness: float
    compute: dict[str, dict]
    test_accuracy_mean: float
    test_accuracy_se: float
    test_accuracies: tuple[float, ...]
    val_accuracy_final_mean: float
    trainable_percent: float
    final_failures: tuple[str, ...]
    model: dict[str, Any]
    train: dict[str, Any]
    base_lr: float
    dataset: str
    num_classes: int
    image_size: int
    weights: str
    search_stop: SearchStop
    model_dir: str = ""

    @property
    def chosen(self) -> CandidateOutcome:
        return next(c for c in self.candidates if c.chosen)

    @property
    def raced(self) -> bool:
        """Whether the final phase was a race (``--final race``)."""
        return self.selected_by == RACED


@dataclass(frozen=True)
class FinetuneOutcome(_Record):
    """A saved configuration fine-tuned on a dataset over several seeds.

    Attributes:
        final: the runs (test accuracy mean and SE, each run, the trainable share).
        blocks: the model's partition.
        block_rows: the per-block table of the configuration applied.
        dataset: the dataset's name.
        model_dir: where the best run (by validation) was saved, or ``None``.
    """

    final: FinalResult
    blocks: tuple[Block, ...]
    block_rows: tuple[dict, ...] = ()
    dataset: str = ""
    model_dir: Path | None = None

    def save(self, path: str | Path, configuration: str) -> None:
        """Write the record (with the configuration file's name) as JSON, atomically."""
        write_json(path, {"config": configuration, **self.to_dict()})

    def to_dict(self) -> dict[str, Any]:
        """The record ``biotune finetune --output`` writes."""
        f = self.final
        return {"dataset": self.dataset, "blocks": list(self.block_rows), "test_accuracy_mean": f.test_accuracy_mean,
                "test_accuracy_se": f.test_accuracy_se, "trainable_percent": f.trainable_percent,
                "runs": [r.to_dict() for r in f.runs]}
