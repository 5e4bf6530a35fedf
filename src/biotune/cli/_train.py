"""The commands that train: ``search``, ``finetune`` and ``compare``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..config import DataConfig, TrainConfig
from ..errors import BioTuneError, redact_url
from ..search import format_block_table
from ..training.memory import format_bytes
from ._options import explicit_settings, print_plan, runtime_config, search_config, settings_lines, train_overrides
from ._progress import Progress


def cmd_search(args) -> int:
    from .. import run
    from ..search import batch_sizes

    config = search_config(args)
    if args.dry_run:
        print_plan(args, config, runtime_config(args))
        return 0
    s = config.search
    total = sum(batch_sizes(s.population, s.elites, s.generations))
    progress = Progress(total, enabled=not args.no_progress)
    progress.set_epochs(config.train.epochs)
    runtime = runtime_config(args)
    try:
        result = run(config, run_dir=args.run_dir, storage=args.storage, runtime=runtime, listener=progress,
                     time_limit=args.time_limit)
    finally:
        progress.close()
    _print_outcome(result, config, args)
    return 0


def _print_outcome(result, config, args) -> None:
    """The search's summary: the chosen configuration, the final phase, accuracy, compute, outputs."""
    best = result.outcome
    print()
    print(f"BioTune configuration for {config.model.name} on {best.dataset} "
          f"({len(result.blocks)} blocks, {config.model.granularity} granularity):")
    print(format_block_table(list(best.blocks)))
    print()
    if best.raced:
        print(f"final race of the {best.strategy} search's top configurations and plain FT (one seed; a racer "
              "clearly behind the leader on validation is dropped), the best finisher on validation chosen:")
    else:
        print(f"top-{len(best.candidates)} configurations of the {best.strategy} search, fine-tuned "
              f"({len(best.test_accuracies)} runs each) and chosen by validation accuracy:")
    for i, c in enumerate(best.candidates):
        mark = "*" if c.chosen else " "
        name = c.label or f"#{i + 1}"
        fitness = "" if c.fitness is None else f"search fitness {c.fitness:.4f}  "
        state = "" if c.dropped_at is None else f"  dropped at epoch {c.dropped_at}"
        print(f"  {mark} {name:>3}  {fitness}val {100 * c.val_accuracy:.2f}%  "
              f"test {100 * c.test_accuracy:.2f}%  trainable {c.trainable_percent:.1f}%{state}")
    print()
    if best.fitness is not None:
        print(f"validation fitness Φ (mean)       : {best.fitness:.4f}  (val. accuracy {1 - best.fitness:.4f})")
    print(f"initial population mean fitness   : {best.initial_population_mean_fitness:.4f}")
    print(f"test accuracy ({len(best.test_accuracies)} runs)            : "
          f"{100 * best.test_accuracy_mean:.2f}% ± {100 * best.test_accuracy_se:.2f} (SE)")
    print(f"trainable parameters              : {best.trainable_percent:.1f}%")
    for failure in best.final_failures:
        print(f"warning: a final run diverged ({failure}); its accuracy is that of its best epoch before, 0 if none")
    print(f"search time                       : {result.search.seconds:.0f} s in this process")
    total = best.compute["total"]
    if total.get("ram_peak_bytes"):
        device = (f", {format_bytes(total['device_peak_bytes'])} of device memory"
                  if total.get("device_peak_bytes") else "")
        print(f"measured peak per training process: {format_bytes(total['ram_peak_bytes'])} RAM{device} "
              f"(the largest of any run; best.json: compute.total)")
    stop = best.search_stop
    if stop.evaluations_pruned:
        label = f"pruned ({stop.pruner})"
        print(f"{label:34s}: {stop.evaluations_pruned} of {stop.evaluations} evaluations "
              f"stopped early; the search trained {best.compute['search']['epochs']} epochs")
    if stop.stopped_by != "generations done":
        print(f"search stopped by                 : {stop.stopped_by} after {stop.generations_done} of "
              f"{stop.generations_planned} generations")
    study = "study.db" if args.storage is None else None
    race = ", race.png, race/race.json" if best.raced else ""
    print(f"outputs                           : {result.run_dir}/ (best.json, history.csv, heatmap.png, convergence.png"
          f"{race}{', ' + study if study else ''})")
    if study is None:
        print(f"study                             : {redact_url(args.storage)}")
    print(f"fine-tuned model                  : {best.model_dir}/ (best final run by validation; "
          f"biotune predict --model {result.run_dir} IMAGES, or timm.create_model(\"local-dir:{best.model_dir}\"))")


def cmd_finetune(args) -> int:
    from .. import finetune, finetune_model_dir, load_configuration

    cfg = load_configuration(args.config)
    base_train = cfg.train or TrainConfig()
    train = dataclasses.replace(base_train, **train_overrides(args))
    data = DataConfig(**{"image_size": cfg.image_size, **explicit_settings(args)["data"]})
    progress = Progress(0, enabled=not args.no_progress)
    progress.search.close()
    progress.set_epochs(train.epochs)
    runtime = runtime_config(args)
    model_dir = args.model_dir or finetune_model_dir(args.config, data.dataset)
    try:
        outcome = finetune(cfg, data=data, train=train, runs=args.runs, seed=args.seed, weights=args.weights,
                           runtime=runtime, listener=progress, model_dir=model_dir)
    finally:
        progress.close()
    result = outcome.final
    print()
    print(f"configuration {args.config} applied to {cfg.model.name} on {outcome.dataset}:")
    print(format_block_table(list(outcome.block_rows)))
    print()
    print(f"test accuracy ({args.runs} runs): {100 * result.test_accuracy_mean:.2f}% ± {100 * result.test_accuracy_se:.2f} (SE)")
    print(f"trainable parameters : {result.trainable_percent:.1f}%")
    print(f"model (best run by validation, seed {result.best_run.seed}): {model_dir}")
    for r in result.runs:
        if r.diverged:
            print(f"warning: run seed {r.seed} diverged ({r.failure}); its accuracy is that of its best epoch before, 0 if none")
    if args.output:
        outcome.save(args.output, str(args.config))
    return 0


def cmd_compare(args) -> int:
    from ..compare import CompareOptions, compare
    from ..training import format_seconds

    args.dataset = None
    config = search_config(args)
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    try:
        fractions = [float(f) for f in split(args.fractions)] if args.fractions else None
    except ValueError:
        raise BioTuneError(f"--fractions must be numbers in (0, 1], got {args.fractions!r}") from None
    if fractions and not all(0 < f <= 1 for f in fractions):
        raise BioTuneError(f"--fractions must be in (0, 1], got {args.fractions!r}")
    options = CompareOptions(lora_rank=args.lora_rank, sp_alpha=args.sp_alpha, sp_beta=args.sp_beta,
                             sp_kernels_only=args.sp_kernels_only, budget_match=not args.no_budget_match,
                             tune_baselines=args.tune_baselines)
    if args.dry_run:
        from ..compare import estimate_compare

        plans = estimate_compare(split(args.datasets), split(args.methods), runs=args.runs, out=args.out, config=config,
                             runtime=runtime_config(args), fractions=fractions,
                             tune_baselines=args.tune_baselines)
        print(f"settings (preset {args.preset}):")
        print("\n".join(line for line in settings_lines(args, config) if ".dataset" not in line))
        low = high = 0.0
        for dataset, cells, estimate in plans:
            print(f"{dataset}: {cells} cells to run ({estimate.search_runs} search runs, {estimate.final_runs} final "
                  f"or baseline runs), estimated {format_seconds(estimate.low)} – {format_seconds(estimate.high)}")
            low, high = low + estimate.low, high + estimate.high
        print(f"whole grid: {sum(c for _, c, _ in plans)} cells to run, estimated {format_seconds(low)} – "
              f"{format_seconds(high)}")
        if plans and plans[0][2].speed.device == "cpu" and high > 3600:
            print(plans[0][2].lines()[-1])
        print("dry run: nothing was trained or written")
        return 0
    bar = tqdm(total=None, desc="compare", unit="cell", disable=args.no_progress, dynamic_ncols=True)
    started, first = time.perf_counter(), []

    def progress(done: int, total: int, label: str) -> None:
        # ETA from the cells this process ran (finished cells skipped on resume take no time)
        if not first:
            first.append(done - 1)
        ran = done - first[0]
        left = (time.perf_counter() - started) / ran * (total - done)
        bar.total = total
        bar.n = done
        bar.set_postfix_str(f"{label}; ETA {format_seconds(left)}")
        bar.refresh()

    try:
        records = compare(split(args.datasets), split(args.methods), runs=args.runs, out=args.out, config=config,
                          runtime=runtime_config(args), options=options, fractions=fractions, on_progress=progress)
    finally:
        bar.close()
    print(f"{len(records)} runs; tables and figures in {args.out}/")
    for name in ("table1_accuracy.md", "table4_compute.md"):  # accuracy, then the compute it cost
        table = Path(args.out) / name
        if table.is_file():
            print(table.read_text())
    return 0
