"""What each pruner would have done to searches that ran without one: epochs saved, and whether the
configuration the full search found best would still have been found.

    python benchmarks/pruning_replay.py STUDIES.db [STUDIES.db ...]

Reads every study of the given ``compare`` study files that ran with ``--pruner none`` (e.g. the
``old`` arm of ``search_efficiency.sh``: every evaluation's whole validation curve is stored as
its intermediate values) and replays each evaluation, in the order asked, through
:class:`biotune.search.pruning.PruneCheck` with the same references a live search would have had
(the earlier generations, as pruned in this replay). The proposals are held fixed (a live TPE
would have proposed other points after seeing pruned values), so this isolates the pruner's
decisions: for each pruner, the share of search epochs saved, and the regret: how many points of
validation accuracy the best configuration by the pruned search's fitness is below the best of the
full search (0: the pruner kept the winner).
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
import optuna

from biotune.search.pruning import PruneCheck, Reference

PRUNERS = ("median", "successive-halving", "hyperband")


def _evaluations(study) -> list[tuple[int, tuple[float, ...]]]:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.intermediate_values]
    done.sort(key=lambda t: (t.user_attrs["generation"], t.user_attrs["slot"]))
    return [(t.user_attrs["generation"], tuple(t.intermediate_values[k] for k in sorted(t.intermediate_values)))
            for t in done]


def replay(evaluations, pruner: str, epochs: int) -> tuple[float, float]:
    """(share of epochs saved, regret in accuracy points) of ``pruner`` on one search."""
    refs: list[Reference] = []
    by_generation = defaultdict(list)
    for index, (generation, curve) in enumerate(evaluations):
        by_generation[generation].append((index, curve))
    kept, full = [], []
    for generation in sorted(by_generation):
        earlier = tuple(refs)
        for index, curve in by_generation[generation]:
            seen = curve
            if earlier:
                stop = PruneCheck(pruner, epochs, earlier, index).start()
                for epoch, value in enumerate(curve[:-1], start=1):
                    if stop(epoch, 1.0 - value):
                        seen = curve[:epoch]
                        break
            kept.append((index, seen, curve))
        refs += [Reference(i, seen, len(seen) < len(curve)) for i, seen, curve in kept[len(refs):]]
    saved = 1 - sum(len(s) for _, s, _ in kept) / sum(len(c) for _, _, c in kept)
    chosen = min(kept, key=lambda k: k[1][-1])  # best by the fitness the pruned search saw
    regret = 100 * (chosen[2][-1] - min(c[-1] for _, _, c in kept))
    return saved, regret


def main(paths: list[str]) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = defaultdict(list)
    for path in paths:
        storage = f"sqlite:///{path}"
        for name in optuna.study.get_all_study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            evaluations = _evaluations(study)
            if not evaluations:
                continue
            epochs = max(len(c) for _, c in evaluations)
            for pruner in PRUNERS:
                saved, regret = replay(evaluations, pruner, epochs)
                rows[pruner].append((name, saved, regret))
                print(f"{name:28s} {pruner:20s} saved {100 * saved:5.1f}%  regret {regret:5.2f} points")
    print("mean over searches:")
    for pruner, items in rows.items():
        print(f"  {pruner:20s} saved {100 * np.mean([s for _, s, _ in items]):5.1f}% of the search epochs, "
              f"regret {np.mean([r for _, _, r in items]):.2f} points (winner kept in "
              f"{sum(r == 0 for _, _, r in items)} of {len(items)})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
