"""Summary and figure of ``search_efficiency.sh``.

``python benchmarks/search_efficiency.py OUT`` reads ``OUT/runs-old.jsonl`` (TPE without warm start
or pruning) and ``OUT/runs-new.jsonl`` (today's default TPE, ftlr and FT) and prints, per dataset,

    search-efficiency: <dataset> new=<test acc %>@<search epochs> old=<acc>@<epochs> ftlr=<acc>@<epochs>

(means over runs paired by run index: new and old over the runs both finished, ftlr over the runs
it and new finished; epochs are the training epochs of the search, or of ftlr's learning-rate
tuning), the same over the datasets, whether each target of issue 22 is met, and writes
``OUT/accuracy-vs-compute.png``: test accuracy against all training epochs (search and final) of
each method, per dataset.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = ("mnist", "usps", "cifar10", "flowers102")


def load(out: Path) -> dict:
    """``{(dataset, arm): [record, ...]}`` with arms ``new``, ``old``, ``ftlr``, ``ft``."""
    cells = defaultdict(list)
    for arm_file, rename in (("runs-old.jsonl", {"tpe": "old"}), ("runs-new.jsonl", {"tpe": "new"})):
        path = out / arm_file
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("fraction") is not None:
                continue
            cells[Path(r["dataset"]).stem, rename.get(r["method"], r["method"])].append(r)
    return cells


def _stats(records: list[dict]) -> tuple[float, float, float, int]:
    acc = [100 * r["test_accuracy"] for r in records]
    search = [r.get("search_compute", {"epochs": 0})["epochs"] for r in records]
    total = [r["compute"]["epochs"] for r in records]
    return float(np.mean(acc)), float(np.mean(search)), float(np.mean(total)), len(records)


def summary(out: Path) -> None:
    cells = load(out)
    datasets = [d for d in ORDER if any(k[0] == d for k in cells)]
    rows = {}
    for d in datasets:
        # Paired: new against old on the runs both finished, new against ftlr on the runs both finished
        # (same seeds, folds and splits within a run).
        runs = {arm: {r["run"] for r in cells[d, arm]} for arm in ("new", "old", "ftlr", "ft")}
        pick = lambda arm, common: [r for r in cells[d, arm] if r["run"] in common]  # noqa: E731
        with_old, with_ftlr = runs["new"] & runs["old"], runs["new"] & runs["ftlr"]
        rows[d] = {}
        if with_old:
            rows[d]["new"], rows[d]["old"] = _stats(pick("new", with_old)), _stats(pick("old", with_old))
        if with_ftlr:
            rows[d]["new_vs_ftlr"], rows[d]["ftlr"] = _stats(pick("new", with_ftlr)), _stats(pick("ftlr", with_ftlr))
        if runs["ft"]:
            rows[d]["ft"] = _stats(cells[d, "ft"])
        if not all(a in rows[d] for a in ("new", "old", "ftlr")):
            print(f"search-efficiency: {d} incomplete ({', '.join(sorted(rows[d]))})")
            continue
        n, o, f = rows[d]["new"], rows[d]["old"], rows[d]["ftlr"]
        print(f"search-efficiency: {d} new={n[0]:.2f}@{n[1]:.0f} old={o[0]:.2f}@{o[1]:.0f} ftlr={f[0]:.2f}@{f[1]:.0f}"
              f"  (runs: new/old {n[3]}, ftlr {f[3]})")
    complete = [d for d in datasets if all(a in rows[d] for a in ("new", "old", "ftlr"))]
    if not complete:
        return
    mean = lambda arm, i: float(np.mean([rows[d][arm][i] for d in complete]))  # noqa: E731
    print(f"search-efficiency: mean new={mean('new', 0):.2f}@{mean('new', 1):.0f} old={mean('old', 0):.2f}@"
          f"{mean('old', 1):.0f} ftlr={mean('ftlr', 0):.2f}@{mean('ftlr', 1):.0f}")
    print("targets (issue 22):")
    for d in complete + ["mean"]:
        if d == "mean":
            n, o = (mean("new", 0), mean("new", 1)), (mean("old", 0), mean("old", 1))
        else:
            n, o = rows[d]["new"], rows[d]["old"]
        ok_acc, ok_cost = n[0] >= o[0] - 0.5, n[1] <= 0.5 * o[1]
        print(f"  {d:10s} new - old = {n[0] - o[0]:+.2f} points ({'met' if ok_acc else 'MISSED'}: >= -0.5); "
              f"search epochs {100 * n[1] / o[1]:.0f}% of old ({'met' if ok_cost else 'MISSED'}: <= 50%)")
    wins = [d for d in complete if rows[d]["new_vs_ftlr"][0] >= rows[d]["ftlr"][0]]
    cheaper = [d for d in complete if rows[d]["new_vs_ftlr"][2] <= rows[d]["ftlr"][2]]
    print(f"  new >= ftlr on {len(wins)} of {len(complete)} ({', '.join(wins) or 'none'}; target: 3); "
          f"new's total epochs <= ftlr's on {len(cheaper)} of {len(complete)}")
    _plot(out, cells, complete)


def _plot(out: Path, cells, datasets) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.6), squeeze=False)
    styles = {"new": ("tab:green", "o", "TPE, warm start + pruning (new)"), "old": ("tab:blue", "s", "TPE (old)"),
              "ftlr": ("tab:orange", "^", "FT, tuned LR"), "ft": ("tab:gray", "v", "FT")}
    for ax, d in zip(axes[0], datasets):
        for arm, (color, marker, label) in styles.items():
            records = cells[d, arm]
            if not records:
                continue
            x = [r["compute"]["epochs"] for r in records]
            y = [100 * r["test_accuracy"] for r in records]
            ax.scatter(x, y, color=color, marker=marker, alpha=0.35, s=18)
            ax.errorbar(np.mean(x), np.mean(y), yerr=np.std(y, ddof=1) / np.sqrt(len(y)) if len(y) > 1 else 0,
                        color=color, marker=marker, markersize=8, capsize=3, label=label)
        ax.set_title(d)
        ax.set_xlabel("training epochs (search + final)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy-vs-compute.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    summary(Path(sys.argv[1]))
