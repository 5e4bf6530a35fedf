"""Measure the offline default run: wall time, best fitness vs the initial population,
and test accuracy against full fine-tuning (all blocks, multiplier 1) with the same epochs.

Run:  python benchmarks/default_run.py   (prints its figures; writes nothing but runs/)
"""

from __future__ import annotations

import sys
import tempfile
import time

from biotune import PRESETS, RunConfig, RuntimeConfig, full_finetune_genome, run
from biotune.search.final import select_final
from biotune.training.executor import LocalExecutor
from biotune.training.session import FINAL_SEEDS, Session, training_seeds


def main() -> int:
    config = RunConfig().replace(**PRESETS["quick"])
    start = time.perf_counter()
    result = run(config, run_dir=tempfile.mkdtemp(prefix="biotune-default-"))
    wall = time.perf_counter() - start
    best = result.best
    print(f"default run wall time      : {wall:.1f} s (search {result.search.seconds:.1f} s)")
    print(f"best validation fitness    : {best['fitness']:.4f}")
    print(f"initial population mean Φ  : {best['initial_population_mean_fitness']:.4f}")
    print(f"BioTune test accuracy      : {100 * best['test_accuracy_mean']:.2f} ± {100 * best['test_accuracy_se']:.2f} "
          f"({best['trainable_percent']:.1f}% trainable)")
    s = config.search
    session = Session.prepare(config.model, config.data, config.train, n_folds=s.n_folds, seed=s.seed,
                              runtime=RuntimeConfig())
    ft = select_final(LocalExecutor(session), [full_finetune_genome(len(session.blocks))], session.blocks,
                      base_lr=config.train.lr, seeds=training_seeds(s.seed, FINAL_SEEDS, s.final_runs)).result
    print(f"full fine-tuning (FT) test : {100 * ft.test_accuracy_mean:.2f} ± {100 * ft.test_accuracy_se:.2f} "
          f"(same {config.train.epochs} epochs, same seeds, 100% trainable)")
    print(f"BioTune - FT               : {100 * (best['test_accuracy_mean'] - ft.test_accuracy_mean):+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
