"""Runs the ``biotune`` command line with a SIGKILL planted at one point (used by test_faults.py).

Usage: python fault_driver.py POINT N -- BIOTUNE-ARGS...

POINT is where the process kills itself, at the N-th occurrence in this process:
``evaluation`` (after an epoch of a search run, mid-evaluation), ``generation`` (right after
the engine is told a generation's fitness), ``final`` (after an epoch of a final run) or
``report`` (a report file fully written to its temporary name, before the rename).
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    point, n = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1 :]
    count = 0
    state = {"final": False}

    def tick() -> None:
        nonlocal count
        count += 1
        if count == n:
            os.kill(os.getpid(), signal.SIGKILL)

    import biotune.training.trainer as trainer
    from biotune.search.evolution import MemeticEvolution
    from biotune.training.session import Session

    perform = Session.perform

    def counted(evaluate):  # the trainer scores each epoch with evaluate, the test split with evaluate_accuracy
        def counted_evaluate(*a, **k):
            result = evaluate(*a, **k)
            if (point == "evaluation" and not state["final"]) or (point == "final" and state["final"]):
                tick()
            return result
        return counted_evaluate

    def flagged_perform(self, request, on_epoch=None):
        state["final"] = request.fold is None
        return perform(self, request, on_epoch)

    trainer.evaluate = counted(trainer.evaluate)
    trainer.evaluate_accuracy = counted(trainer.evaluate_accuracy)
    Session.perform = flagged_perform
    if point == "generation":
        from biotune.search.engines import _BatchSampler

        for engine in (MemeticEvolution, _BatchSampler):  # whichever strategy the search uses
            def counted_tell(self, fitnesses, _tell=engine.tell):
                stats = _tell(self, fitnesses)
                tick()
                return stats

            engine.tell = counted_tell
    elif point == "report":
        replace = os.replace
        reports = {"best.json", "heatmap.png", "history.csv", "convergence.png"}

        def counted_replace(src, dst, *a, **k):
            if os.path.basename(dst) in reports:
                tick()
            return replace(src, dst, *a, **k)

        os.replace = counted_replace

    from biotune.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
