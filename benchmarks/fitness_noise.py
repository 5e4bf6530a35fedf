"""How noisy is the search's fitness? Figures to choose seeds, epochs, fold fraction and top-k by.

For ``--configs`` random configurations from the search's prior plus full fine-tuning (FT),
each trained on ``--folds`` folds with ``--seeds`` seeds at each budget (``--budgets``,
epochs:patience), and once on the full training set (scored on validation and test), it
prints per budget:

- the spread of validation accuracy *between* configurations (std of the configuration
  means) against the spread *within* a configuration (pooled std over its folds and seeds),
  and their ratio: how many seeds make the ranking trustworthy;
- the rank correlation (Spearman) of the configurations' scores across folds and across
  seeds;
- the rank correlation between search fitness (mean over folds and seeds) and the final
  run's validation and test accuracy, and where the best-by-search configuration ranks on
  test (what top-k protects against).

Usage::

    python benchmarks/fitness_noise.py --dataset flowers102 --data-dir ../shared/data \\
        --image-size 64 > benchmarks/results/fitness_noise.txt

``--analyse FILE ...`` reads the tables of earlier outputs instead and prints what each way of
spending the search's evaluations buys, as the mean Spearman correlation between the search's
score of the configurations and their final run's test (and validation) accuracy, over every
choice of instances (a (fold, seed) pair is an instance): *paired* — every configuration scored on
the same k instances (what the search does: one fold and the same seeds per generation) — against
*unpaired* — each configuration on its own k instances (as when configurations of different
generations, on different folds, are compared), for k = 1 … all.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from biotune.models.blocks import trainable_percent
from biotune.search.genome import decode, full_finetune_genome, random_genome
from biotune.training.session import RunRequest, Session


def _rho(a, b) -> float:
    return float(spearmanr(a, b).statistic)


def _tables(path: str) -> list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
    """Every ``config f0s0 … mean final-val final-test`` table of an output: instance names,
    the per-instance validation accuracies (configs × instances), final val and final test."""
    out, rows, names = [], [], None
    for line in open(path).read().splitlines() + [""]:
        cells = line.split()
        if cells[:1] == ["config"]:
            names, rows = cells[1:-3], []
        elif names is not None and len(cells) == len(names) + 4:
            rows.append([float(x) for x in cells[1:]])
        elif names is not None:
            if rows:
                a = np.array(rows)
                out.append((names, a[:, :len(names)], a[:, -2], a[:, -1]))
            names = None
    return out


def analyse(paths: list[str], draws: int = 2000) -> None:
    """Print the rank correlation each way of scoring buys (see the module's docstring)."""
    rng = np.random.default_rng(0)
    for path in paths:
        for names, acc, val, test in _tables(path):
            n, m = acc.shape
            print(f"# {path}: {n} configurations x {m} instances ({' '.join(names)})")
            for k in range(1, m + 1):
                paired, unpaired = [], []
                for _ in range(draws):
                    cols = rng.choice(m, k, replace=False)
                    score = acc[:, cols].mean(1)
                    paired.append((_rho(score, test), _rho(score, val)))
                    own = np.array([acc[i, rng.choice(m, k, replace=False)].mean() for i in range(n)])
                    unpaired.append((_rho(own, test), _rho(own, val)))
                p, u = np.mean(paired, 0), np.mean(unpaired, 0)
                print(f"rank-correlation: {k} instance(s) paired test={p[0]:.3f} val={p[1]:.3f}   "
                      f"unpaired test={u[0]:.3f} val={u[1]:.3f}")
            _wilcoxon_replay(acc, test, rng)


def _wilcoxon_replay(acc: np.ndarray, test: np.ndarray, rng, orders: int = 200) -> None:
    """``--pruner wilcoxon`` replayed on a table: the configurations as one generation, the instances
    as its seeds in a random order; what it saves and what it changes, against every run."""
    from biotune.search.pruning import wilcoxon_prunes

    n, m = acc.shape
    fit = 100.0 - acc  # the search's fitness, in points: lower is better
    saved, rhos, chosen, lost_best = [], [], [], 0
    for _ in range(orders):
        order = rng.permutation(m)
        running, ran = list(range(n)), np.full(n, m)
        for j in range(1, m + 1):
            leader = min(running, key=lambda i: fit[i, order[:j]].mean())
            for i in [i for i in running if i != leader and j < m and
                      wilcoxon_prunes(fit[i, order[:j]], fit[leader, order[:j]])]:
                running.remove(i)
                ran[i] = j
        score = np.array([fit[i, order[:ran[i]]].mean() for i in range(n)])
        saved.append(1 - ran.sum() / (n * m))
        rhos.append(_rho(-score, test))
        chosen.append(test[int(np.argmin(score))])
        lost_best += all(ran[b] < m for b in np.flatnonzero(test == test.max()))  # every best one (ties)
    full = fit.mean(1)
    print(f"wilcoxon replay ({orders} seed orders): saves {100 * np.mean(saved):.1f}% of the runs; Spearman with "
          f"final test {np.mean(rhos):.3f} (every run: {_rho(-full, test):.3f}); the chosen configuration's final test "
          f"{np.mean(chosen):.2f} (every run: {test[int(np.argmin(full))]:.2f}); every best on test stopped in "
          f"{100 * lost_best / orders:.0f}% of the orders")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="flowers102")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--configs", type=int, default=12)
    p.add_argument("--folds", type=int, default=2, help="folds used (of ceil(1/fraction))")
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budgets", default="4:2,10:3", help="epochs:patience per budget, comma-separated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--analyse", nargs="+", default=None, metavar="FILE",
                   help="analyse the tables of earlier outputs instead of training (see above)")
    args = p.parse_args()
    if args.analyse:
        analyse(args.analyse)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = RuntimeConfig(data_dir=args.data_dir, threads=args.threads)
    data = DataConfig(dataset=args.dataset, image_size=args.image_size)
    n_folds = int(np.ceil(1 / args.fraction))
    rng = np.random.default_rng(2026)
    names = ["FT"] + [f"r{i:02d}" for i in range(args.configs)]
    start = time.perf_counter()
    for budget in args.budgets.split(","):
        epochs, patience = (int(x) for x in budget.split(":"))
        train = TrainConfig(epochs=epochs, patience=patience, batch_size=args.batch_size)
        session = Session.prepare(ModelConfig(name=args.model), data, train, n_folds=n_folds, seed=0, runtime=runtime)
        n_blocks = len(session.blocks)
        if budget == args.budgets.split(",")[0]:
            genomes = [full_finetune_genome(n_blocks)] + [random_genome(rng, n_blocks) for _ in range(args.configs)]
            print(f"# {args.dataset} at {session.image_size} px, {args.model}, {n_blocks} blocks, "
                  f"fold fraction {args.fraction} ({len(session.splits.folds[0])} images), {args.seeds} seeds, "
                  f"{args.folds} folds, {len(genomes)} configurations")
            for name, g in zip(names, genomes):
                d = decode(g, 1.0)
                print(f"  {name}: trainable {trainable_percent(session.blocks, d.mask):5.1f}%  "
                      f"multipliers {' '.join('-' if not m else f'{lr:.2g}' for m, lr in zip(d.mask, d.lrs))}")
        acc = np.zeros((len(genomes), args.folds, args.seeds))
        for i, g in enumerate(genomes):
            lrs = tuple(decode(g, train.lr).lrs)
            for f in range(args.folds):
                for s in range(args.seeds):
                    acc[i, f, s] = session.perform(RunRequest(lrs, f, 1000 + s)).best_val_accuracy
        final = [session.perform(RunRequest(tuple(decode(g, train.lr).lrs), None, 7)) for g in genomes]
        val = np.array([o.best_val_accuracy for o in final])
        test = np.array([float(o.test_accuracy or 0.0) for o in final])
        means = acc.mean(axis=(1, 2))
        within = float(np.sqrt(acc.reshape(len(genomes), -1).var(axis=1, ddof=1).mean()))
        seed_only = float(np.sqrt(acc.var(axis=2, ddof=1).mean()))
        between = float(means.std(ddof=1))
        print(f"\n## budget {epochs} epochs, patience {patience} ({time.perf_counter() - start:.0f} s so far)")
        print("config  " + "  ".join(f"f{f}s{s}" for f in range(args.folds) for s in range(args.seeds))
              + "   mean  final-val final-test")
        for i, name in enumerate(names):
            print(f"{name:6s}  " + "  ".join(f"{100 * a:5.1f}" for a in acc[i].ravel())
                  + f"  {100 * means[i]:5.1f}  {100 * val[i]:8.1f} {100 * test[i]:9.1f}")
        print(f"between-configuration std of mean val. accuracy : {100 * between:.2f} points")
        print(f"within-configuration std (folds and seeds)      : {100 * within:.2f} points "
              f"(seeds alone {100 * seed_only:.2f})")
        print(f"ratio between / within                          : {between / within:.2f}")
        fold_rho = np.mean([_rho(acc[:, a].mean(1), acc[:, b].mean(1))
                            for a in range(args.folds) for b in range(a + 1, args.folds)]) if args.folds > 1 else np.nan
        seed_rho = np.mean([_rho(acc[:, :, a].mean(1), acc[:, :, b].mean(1))
                            for a in range(args.seeds) for b in range(a + 1, args.seeds)]) if args.seeds > 1 else np.nan
        one_run = np.mean([_rho(acc[:, f, s], test) for f in range(args.folds) for s in range(args.seeds)])
        print(f"Spearman across folds / across seeds            : {fold_rho:.2f} / {seed_rho:.2f}")
        print(f"Spearman search fitness vs final val / test     : {_rho(means, val):.2f} / {_rho(means, test):.2f} "
              f"(one run instead of the mean: {one_run:.2f} vs test)")
        order = np.argsort(-means)
        test_rank = {int(i): r + 1 for r, i in enumerate(np.argsort(-test))}
        print("test rank of the search's top 5                 : "
              + ", ".join(f"{names[i]}→{test_rank[int(i)]}" for i in order[:5]))
        print(f"best final test {100 * test.max():.1f}; top-1 by search {100 * test[order[0]]:.1f}; "
              f"best of top-3 by final val {100 * test[order[:3]][np.argmax(val[order[:3]])]:.1f}; "
              f"best of top-5 by final val {100 * test[order[:5]][np.argmax(val[order[:5]])]:.1f}")
    print(f"\nfitness-noise-seconds: {time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()
