"""Helpers of ``search_quality.sh``: the reduced datasets it searches, and its summary lines.

``python benchmarks/search_quality.py prepare DATA WORK N``
    writes ``WORK/<name>.npz`` for mnist, usps and cifar10 with N training and N test images
    (stratified, scikit-learn's ``train_test_split``, seed 0) and copies flowers102 as it is
    (728 training images, its own validation split).
``python benchmarks/search_quality.py summary OUT``
    prints, from ``OUT/runs.jsonl``, one line per dataset
    ``biotune-vs-random: <dataset> <biotune mean> <random mean>`` (test accuracy, %; BioTune is
    its memetic search, the paper's operators), the same for the robust operators, against
    TPE and FT where they ran, and the mean compute of each method.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

SUBSAMPLED = ("mnist", "usps", "cifar10")


def _subsample(x, y, n):
    if n >= len(y):
        return x, y
    keep, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=0)
    keep = np.sort(keep)
    return x[keep], y[keep]


def prepare(data: Path, work: Path, n: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for name in SUBSAMPLED:
        with np.load(data / f"{name}.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["x_train"], arrays["y_train"] = _subsample(arrays["x_train"], arrays["y_train"], n)
        arrays["x_test"], arrays["y_test"] = _subsample(arrays["x_test"], arrays["y_test"], n)
        meta = json.loads(str(arrays["meta"]))
        meta["search_quality_subsample"] = f"{n} train / {n} test, stratified, seed 0"
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez_compressed(work / f"{name}.npz", **arrays)
    shutil.copy(data / "flowers102.npz", work / "flowers102.npz")


def summary(out: Path) -> None:
    acc, compute = defaultdict(list), defaultdict(list)
    datasets = []
    for line in (out / "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        d = Path(r["dataset"]).stem
        if d not in datasets:
            datasets.append(d)
        acc[d, r["method"]].append(100 * r["test_accuracy"])
        compute[r["method"]].append(r["compute"])
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    # BioTune's search is the paper's memetic one here; robust is the other operator set.
    for mine, name in (("memetic", "biotune"), ("robust", "robust")):
        for d in datasets:
            print(f"{name}-vs-random: {d} {mean(acc[d, mine]):.2f} {mean(acc[d, 'random']):.2f}"
                  f"  (runs: {len(acc[d, mine])} vs {len(acc[d, 'random'])})")
        wins = sum(mean(acc[d, mine]) >= mean(acc[d, "random"]) for d in datasets)
        print(f"{mine} >= random on {wins} of {len(datasets)} datasets; mean over datasets "
              f"{mean([mean(acc[d, mine]) for d in datasets]):.2f} vs "
              f"{mean([mean(acc[d, 'random']) for d in datasets]):.2f}")
    for other in ("tpe", "ft"):
        for d in datasets:
            if acc[d, other]:
                print(f"biotune-vs-{other}: {d} {mean(acc[d, 'memetic']):.2f} {mean(acc[d, other]):.2f}")
    print("mean compute per run (search and final phase together):")
    for m, items in compute.items():
        keys = ("training_runs", "epochs", "train_images", "train_seconds")
        print(f"  {m:8s} " + "  ".join(f"{k} {np.mean([c[k] for c in items]):.0f}" for k in keys))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "summary":
        summary(Path(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
