"""Progress bars of a search: evaluations, the epochs of the running one, the final phase."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from ..search import SearchListener


class Progress(SearchListener):
    """tqdm bars: evaluations of the search, epochs of the current run, final runs."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self.search = tqdm(total=total, desc="search", unit="eval", disable=not enabled, dynamic_ncols=True)
        self.epochs = None
        self.final = None
        self._epochs_total = 0
        self._images = 0  # training images of one epoch of the runs now running (0: unknown)
        self._final_images = 0

    def set_epochs(self, n: int) -> None:
        self._epochs_total = n

    def on_estimate(self, estimate) -> None:
        for line in estimate.lines():
            tqdm.write(line, file=sys.stderr)
        self._images, self._final_images = getattr(estimate, "epoch_images", (0, 0))

    def on_generation_start(self, generation, fold, candidates) -> None:
        self.search.set_description(f"search gen {generation} fold {fold}")

    def on_evaluation_start(self, candidate) -> None:
        self._close_epochs()

    def on_epoch(self, epoch, val_accuracy, train_loss) -> None:
        if self.epochs is None or epoch == 1:
            self._close_epochs()
            self.epochs = tqdm(total=self._epochs_total, desc="  run", leave=False, disable=not self.enabled,
                               dynamic_ncols=True,
                               bar_format="{desc}: epoch {n}/{total} |{bar}| {elapsed}<{remaining} {postfix}")
        self.epochs.update(1)
        rate = self.epochs.format_dict.get("rate")  # epochs per second, smoothed by tqdm
        extra = {"img/s": f"{rate * self._images:.0f}"} if rate and self._images else {}
        self.epochs.set_postfix(val_acc=f"{val_accuracy:.3f}", loss=f"{train_loss:.3f}", **extra)

    def _close_epochs(self) -> None:
        if self.epochs is not None:
            self.epochs.close()
            self.epochs = None

    def on_evaluation(self, record) -> None:
        self.search.update(1)
        best = getattr(self, "_best", 1.0)
        self._best = min(best, record.evaluation.fitness)
        self._pruned = getattr(self, "_pruned", 0) + (record.source != "memo" and record.evaluation.pruned)
        extra = {"pruned": self._pruned} if self._pruned else {}
        self.search.set_postfix(best_fitness=f"{self._best:.4f}", **extra)

    def on_final_start(self, n_runs) -> None:
        self._close_epochs()
        self._images = self._final_images or self._images
        self.search.close()
        self.final = tqdm(total=n_runs, desc="final fine-tune", unit="run", disable=not self.enabled, dynamic_ncols=True)

    def on_final_run(self, run) -> None:
        self._close_epochs()
        if self.final is not None:
            self.final.update(1)
            self.final.set_postfix(test_acc=f"{run.test_accuracy:.3f}")

    def close(self) -> None:
        self._close_epochs()
        for bar in (self.search, self.final):
            if bar is not None:
                bar.close()
