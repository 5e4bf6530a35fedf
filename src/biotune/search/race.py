"""The final phase as a race: the search's finalists and plain FT fine-tuned side by side, the
ones clearly behind dropped at rungs, the survivors finished, the best on validation chosen.

Every racer trains on all training data with the same seed, hence the same head start and batch
order; they differ only in their configuration. At each rung (by default one, after 75 % of the
epochs) every racer still running pauses (its state written to a checkpoint) and is
compared with the leader (the best validation accuracy so far, ties: the lower validation loss)
image by image on the whole validation set: a racer is dropped when the leader is ahead by more
than :data:`Z` paired standard errors (:func:`biotune.training.metrics.paired_gap`) *and* has
the lower validation loss. Survivors go on from their checkpoints.

Why: the top-k × seeds final phase spends 3–6 full runs to choose among configurations whose
differences are often within one run's noise; a race spends full runs only on the ones still
in contention (3.25–4 FT runs for 3 finalists and FT, against 6 for top-3 × 2 seeds), and since plain FT races too, the
configuration chosen is never below FT on validation: a racer is only dropped behind a leader
whose best accuracy can only grow, so the chosen racer's validation accuracy is at least FT's
best (up to where FT ran).

A race resumes: each racer's result at each stage is appended to ``race.json`` as it lands
(:class:`RaceLedger`), and a racer cut off mid-stage goes on from its last rung's checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .._files import write_json
from ..errors import BioTuneError
from ..models.blocks import Block
from ..training.executor import Executor
from ..training.metrics import paired_gap
from ..training.session import RunOutcome, RunRequest
from .final import RACED, Selection, final_result, final_run, weights_name
from .genome import decode, full_finetune_genome

__all__ = ["RUNGS", "Z", "rung_epochs", "behind", "RaceLedger", "race", "FT_LABEL"]

#: Rungs, as shares of the epoch budget, at which racers are compared: one, once the cosine schedule
#: is mostly spent. Earlier rungs dropped slow starters: on Flowers-102 the search's best configuration
#: (a high rate, its new head still warming) stood at 5 % validation accuracy after epoch 1 of 4 and
#: 34 % after epoch 2, behind the leader by more than the noise both times, and was dropped; with
#: the one rung at epoch 3 it won the race, +4.9 points on test (benchmarks/README.md, "search_cost.sh").
RUNGS = (0.75,)
#: A racer is dropped when the leader is ahead by more than this many paired standard errors.
Z = 2.0
FT_LABEL = "FT"


def rung_epochs(epochs: int, rungs: Sequence[float] = RUNGS) -> tuple[int, ...]:
    """The epochs after which racers pause and are compared (none at or after the last epoch).

    Example:
        >>> rung_epochs(30), rung_epochs(4), rung_epochs(1)
        ((22,), (3,), ())
    """
    at = {max(1, int(round(r * epochs))) for r in rungs}
    return tuple(sorted(e for e in at if e < epochs))


def behind(leader: RunOutcome, other: RunOutcome, labels: torch.Tensor, z: float = Z) -> bool:
    """Whether ``other`` trails ``leader`` by more than the noise: ``z`` paired standard errors of
    top-1 accuracy on the validation images at their best epochs, and a higher validation loss."""
    if other.diverged and not leader.diverged:
        return True
    if leader.val_predicted is None or other.val_predicted is None:
        raise BioTuneError("a race compares racers image by image: run them as final runs (fold=None)")
    gap, se = paired_gap(torch.from_numpy(leader.val_predicted), torch.from_numpy(other.val_predicted), labels)
    return gap > z * se and leader.best_val_loss < other.best_val_loss


def _key(outcome: RunOutcome) -> tuple[float, float]:
    return outcome.best_val_accuracy, -outcome.best_val_loss


class RaceLedger:
    """Each racer's outcome at each stage, in ``<folder>/race.json``, written as it lands.

    Args:
        folder: where the ledger and the racers' checkpoints live.
        racers: the racers' genomes; a ledger of other racers (or seed, or stages) is started afresh.
    """

    def __init__(self, folder: str | Path, racers: Sequence[tuple[float, ...]], seed: int,
                 stages: Sequence[int | None] = ()) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "race.json"
        self.header = {"racers": [list(g) for g in racers], "seed": int(seed), "stages": list(stages)}
        self.laps: dict[tuple[int, int], RunOutcome] = {}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if {k: saved.get(k) for k in self.header} == self.header:
                for lap in saved["laps"]:
                    out = dict(lap["outcome"])
                    predicted = out.pop("val_predicted")
                    out["val_accuracies"] = tuple(out["val_accuracies"])
                    self.laps[(lap["racer"], lap["stage"])] = RunOutcome(
                        **out, val_predicted=None if predicted is None else np.asarray(predicted, dtype=np.int32))

    def checkpoint(self, racer: int, stage: int) -> Path:
        return self.folder / f"racer{racer}-stage{stage}.pt"

    def add(self, racer: int, stage: int, outcome: RunOutcome) -> None:
        self.laps[(racer, stage)] = outcome
        laps = []
        for (r, k), o in sorted(self.laps.items()):
            out = dataclasses.asdict(o)
            out["val_predicted"] = None if o.val_predicted is None else o.val_predicted.tolist()
            out["val_accuracies"] = list(o.val_accuracies)
            laps.append({"racer": r, "stage": k, "outcome": out})
        write_json(self.path, {**self.header, "laps": laps})
        if stage > 0:  # the checkpoint it went on from is no longer needed
            self.checkpoint(racer, stage - 1).unlink(missing_ok=True)


def race(
    executor: Executor,
    candidates: Sequence[Sequence[float]],
    blocks: Sequence[Block],
    labels: torch.Tensor,
    *,
    base_lr: float,
    seed: int,
    epochs: int,
    folder: str | Path,
    weights_dir: str | Path | None = None,
    rungs: Sequence[float] = RUNGS,
    z: float = Z,
    with_ft: bool = True,
    on_lap: Callable[[int, int, RunOutcome], None] | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> Selection:
    """Race ``candidates`` (best first) and plain FT; the best finisher on validation is chosen.

    Args:
        labels: the validation labels (the racers' predictions are compared against them).
        seed: every racer's training seed.
        epochs: the epoch budget (rungs are shares of it, :func:`rung_epochs`).
        folder: the race's ledger and checkpoints (:class:`RaceLedger`); reused on resume.
        weights_dir: where finishers write their best-epoch weights (:func:`weights_name`);
            only the chosen racer's file is kept.
        with_ft: add plain FT (every block at the base rate) unless a candidate already is it.
        on_lap: called as ``on_lap(racer, stage, outcome)`` after each racer's stage.

    Returns:
        A :class:`Selection` of every racer (FT last, labelled ``FT``); a dropped racer's result
        is where it stood when dropped (``dropped_at``), its test accuracy at that best epoch.
    """
    genes = [tuple(float(g) for g in c) for c in candidates]
    if not genes:
        raise BioTuneError("a race needs at least one candidate configuration")
    decoded = [decode(np.asarray(g), base_lr) for g in genes]
    is_ft = [bool(np.allclose(d.lrs, base_lr)) for d in decoded]
    if with_ft and not any(is_ft):
        genes.append(tuple(float(g) for g in full_finetune_genome(len(blocks))))
        decoded.append(decode(np.asarray(genes[-1]), base_lr))
        is_ft.append(True)
    labels_of = [FT_LABEL if f else "" for f in is_ft]
    stages: tuple[int | None, ...] = (*rung_epochs(epochs, rungs), None)
    ledger = RaceLedger(folder, genes, seed, stages)
    weights = None if weights_dir is None else Path(weights_dir)
    alive, dropped, last = list(range(len(genes))), {}, {}
    seconds = dict.fromkeys(alive, 0.0)
    for stage, stop in enumerate(stages):
        todo = [i for i in alive if (i, stage) not in ledger.laps]

        def request(i: int) -> RunRequest:
            return RunRequest(
                tuple(decoded[i].lrs), None, seed,
                save_to=None if weights is None else str(weights / weights_name(genes[i], seed)),
                stop_at=stop, checkpoint=str(ledger.checkpoint(i, stage)),
                resume_from=None if stage == 0 else str(ledger.checkpoint(i, stage - 1)),
            )

        def finished(j: int, outcome: RunOutcome) -> None:
            ledger.add(todo[j], stage, outcome)
            if on_lap is not None:
                on_lap(todo[j], stage, outcome)

        executor.run([request(i) for i in todo], finished, on_epoch)
        for i in alive:
            last[i] = ledger.laps[(i, stage)]
            seconds[i] += last[i].seconds
        alive = [i for i in alive if last[i].paused]
        if stop is None or not alive:
            break
        leader = max(last, key=lambda i: (*_key(last[i]), -i))
        for i in list(alive):
            if i != leader and behind(last[leader], last[i], labels, z):
                dropped[i] = stop
                alive.remove(i)
                ledger.checkpoint(i, stage).unlink(missing_ok=True)
    results = tuple(
        final_result(g, blocks, d.mask, [final_run(seed, last[i], seconds[i])], label=labels_of[i],
                     dropped_at=dropped.get(i))
        for i, (g, d) in enumerate(zip(genes, decoded))
    )
    finishers = [i for i in range(len(genes)) if i not in dropped]
    chosen = max(finishers, key=lambda i: (*_key(last[i]), -i))
    if weights is not None:
        for i in finishers:
            if i != chosen:
                (weights / weights_name(genes[i], seed)).unlink(missing_ok=True)
    return Selection(results, chosen, selected_by=RACED)
