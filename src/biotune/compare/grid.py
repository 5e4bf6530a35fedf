"""``biotune compare``: every (dataset, method, run) of the paper's comparison, resumable, then
Table I (test accuracy), Table II (trainable share), Fig. 2 (BioTune's configurations),
convergence plots and, with fractions, Table III.

Each finished run is appended as one JSON line to ``<out>/runs.jsonl`` and never repeated: a
rerun of the same command skips what is there. BioTune's own searches keep their trials in
``<out>/studies.db``, so an interrupted search resumes too.

Protocol per dataset: one split of the data (the search seed), the same preprocessed tensors,
epochs budget, schedule and early stopping for every method. Run r trains with seeds derived
from ``seed + r``; every method is scored on test at its best validation epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .._files import atomic_write_bytes, slug
from .._registry import STRATEGIES
from ..config import RunConfig, RuntimeConfig
from ..errors import BioTuneError
from ..search.engines import make_engine
from ..search.evolution import batch_sizes
from ..search.final import Selection, select_final
from ..search.race import race
from ..search.fitness import FitnessEvaluator
from ..search.loop import SearchResult, run_search
from ..search.pruning import Pruner
from ..search.budget import estimate_search
from ..search.report import block_table, plot_convergence, plot_heatmap
from ..search.study import TrialStore, gene_names
from ..training.estimate import Estimate, estimate_runs, measure_speed
from ..training.executor import make_executor
from ..training.session import FINAL_SEEDS, SEARCH_SEEDS, Compute, Session, SessionSpec, training_seeds
from .baselines import BASELINES, Knobs, default_knobs
from .figures import plot_cost
from .tables import accuracy_table, compute_table, distance_table, to_csv, to_latex, to_markdown, trainable_table
from .perform import perform_baseline
from .tuned import TUNED, tune_baseline

__all__ = ["METHODS", "SEARCHES", "CellRecord", "CompareOptions", "compare", "estimate_compare"]

logger = logging.getLogger(__name__)

# ``biotune`` searches with the configured strategy; the others are the same search with that
# strategy instead: same prior, budget, folds, seeds and top-k selection.
SEARCHES = ("biotune", *STRATEGIES)
METHODS = (*BASELINES, *TUNED, *SEARCHES)


@dataclass(frozen=True)
class CompareOptions:
    """Settings of the baselines (the search and training settings come from the RunConfig).

    Attributes:
        lora_rank, sp_alpha, sp_beta: replace the defaults of :data:`~biotune.compare.baselines.DEFAULT_KNOBS`
            (LoRA's rank, with alpha = rank; the -SP weights of L1-SP and L2-SP) when set.
        sp_kernels_only: -SP penalises only kernels (tensors of 2 or more dimensions).
        budget_match: ftlr/llrd tune with as many runs as BioTune's search makes (else one run per value).
        tune_baselines: every baseline chooses its own knobs on validation at ftlr's compute
            (:func:`~biotune.compare.tuned.tune_baseline`); its cells are labelled ``<method> (tuned)``.
    """

    lora_rank: int | None = None
    sp_alpha: float | None = None
    sp_beta: float | None = None
    sp_kernels_only: bool = False
    budget_match: bool = True
    tune_baselines: bool = False

    def knobs(self, method: str) -> Knobs:
        """The method's default knobs with this comparison's overrides."""
        knobs = default_knobs(method)
        if method == "lora" and self.lora_rank is not None:
            knobs = knobs.replace(rank=int(self.lora_rank), lora_alpha=float(self.lora_rank))
        if method in ("l1sp", "l2sp"):
            knobs = knobs.replace(alpha=knobs.alpha if self.sp_alpha is None else float(self.sp_alpha),
                                  beta=knobs.beta if self.sp_beta is None else float(self.sp_beta))
        return knobs


TUNED_SUFFIX = " (tuned)"


def label(method: str, tuned: bool) -> str:
    """A method's name in the tables: a tuned baseline is ``"<method> (tuned)"``."""
    return method + TUNED_SUFFIX if tuned else method


def _key(record: dict) -> tuple:
    return (record["dataset"], record["method"], int(record["run"]), record.get("fraction"),
            bool(record.get("tuned", False)))


def _read_ledger(path: Path) -> dict[tuple, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a kill: that run is redone
                continue
            done[_key(record)] = record
    return done


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _grid(datasets, methods, runs: int, fractions, tune_baselines: bool = False) -> list[tuple]:
    """Every (dataset, method, run, fraction, tuned) cell, after checking the methods and sizes."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BioTuneError(f"--methods: unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if not datasets or not methods or runs < 1:
        raise BioTuneError("--datasets and --methods must not be empty and --runs must be at least 1")
    grid = [(d, m, r, None, tune_baselines and m in BASELINES) for d in datasets for m in methods for r in range(runs)]
    return grid + [(d, "biotune", r, float(f), False) for f in (fractions or ()) for d in datasets for r in range(runs)]


def compare(
    datasets: Sequence[str],
    methods: Sequence[str],
    *,
    runs: int,
    out: str | Path,
    config: RunConfig | None = None,
    runtime: RuntimeConfig | None = None,
    options: CompareOptions | None = None,
    fractions: Sequence[float] | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> list[dict]:
    """Run the grid (skipping finished runs), write the tables and figures, return every run.

    Args:
        datasets: names, ``digits``, ``.npz`` paths or ImageFolder directories.
        methods: any of :data:`METHODS`.
        runs: runs per (dataset, method).
        out: output directory.
        config: model, training and search settings shared by every method.
        fractions: also run BioTune at these training-data fractions (Table III).
        on_progress: called as ``on_progress(done, total, label)`` after each run.
    """
    config = config or RunConfig()
    runtime = runtime or RuntimeConfig()
    options = options or CompareOptions()
    grid = _grid(datasets, methods, runs, fractions, options.tune_baselines)
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BioTuneError(f"--out {out} cannot be written ({err.strerror or err})") from None
    ledger = out / "runs.jsonl"
    done = _read_ledger(ledger)
    finished = sum(1 for g in grid if g in done)
    for dataset in datasets:
        for fraction in [None, *(fractions or ())]:
            todo = [g for g in grid if g[0] == dataset and g[3] == fraction and g not in done]
            if not todo:
                continue
            cfg = config if fraction is None else config.replace(search={"fraction": fraction})
            session = Session.prepare(cfg.model, dataclasses.replace(cfg.data, dataset=dataset), cfg.train,
                                      n_folds=cfg.search.n_folds, seed=cfg.search.seed, runtime=runtime)
            for _, method, run, frac, tuned in todo:
                cell = _Cell(dataset, method, run, frac, cfg.search.seed + run, tuned)
                record = _run_one(session, cell, cfg, runtime, options, out)
                _append(ledger, record)
                done[_key(record)] = record
                finished += 1
                if on_progress is not None:
                    on_progress(finished, len(grid), f"{dataset} {method} run {run}")
    records = [done[g] for g in grid if g in done]
    shown = [dict(r, method=label(r["method"], r.get("tuned", False))) for r in records]
    names = [label(m, options.tune_baselines and m in BASELINES) for m in methods]
    _write_outputs(out, shown, list(datasets), names, fractions, config.train.metric)
    return records


def estimate_compare(
    datasets: Sequence[str],
    methods: Sequence[str],
    *,
    runs: int,
    out: str | Path,
    config: RunConfig | None = None,
    runtime: RuntimeConfig | None = None,
    fractions: Sequence[float] | None = None,
    tune_baselines: bool = False,
) -> list[tuple[str, int, Estimate]]:
    """For each dataset: the cells still to run and their measured time estimate; writes nothing.

    A baseline cell is one fine-tuning run on the full training set; a search cell is its
    search plus its top-k final runs (one seed each); a tuned baseline or competitor is its
    tuning runs on the search's folds plus one final run.
    """
    config = config or RunConfig()
    runtime = runtime or RuntimeConfig()
    grid = _grid(datasets, methods, runs, fractions, tune_baselines)
    done = _read_ledger(Path(out).expanduser() / "runs.jsonl")
    plans = []
    for dataset in datasets:
        todo = [g for g in grid if g[0] == dataset and g not in done]
        session = Session.prepare(config.model, dataclasses.replace(config.data, dataset=dataset), config.train,
                                  n_folds=config.search.n_folds, seed=config.search.seed, runtime=runtime)
        speed = measure_speed(session, runtime)
        t = session.splits
        total = None
        for _, method, _, fraction, tuned in todo:
            one = dict(runs=1, train_images=len(t.y_train), val_images=len(t.y_val),
                       test_images=len(t.y_test), epochs=config.train.epochs, patience=config.train.patience)
            if (method in BASELINES and not tuned) or method == "lpft":
                cell = estimate_runs(speed, **one)
            elif method in TUNED or tuned:  # a grid search with the search's runs on folds, then one final run
                s = config.search
                runs = sum(batch_sizes(s.population, s.elites, s.generations)) * s.seeds
                cell = estimate_runs(speed, **one, search_runs=runs,
                                     search_train_images=session.splits.largest_fold)
            else:  # a Table III fraction is estimated at the configured fold size
                cell = estimate_search(session, config, runtime, speed, final_seeds=1)
            total = cell if total is None else total + cell
        if total is not None:
            plans.append((dataset, len(todo), total))
    return plans


@dataclass(frozen=True)
class _Cell:
    """One (dataset, method, run, fraction, tuned) of the grid and its seeds (run r: the search seed + r)."""

    dataset: str
    method: str
    run: int
    fraction: float | None
    seed: int
    tuned: bool = False

    @property
    def final_seed(self) -> int:
        return training_seeds(self.seed, FINAL_SEEDS, 1)[0]


@dataclass(frozen=True)
class CellRecord:
    """One finished cell, as a line of ``runs.jsonl`` (the tables and a resume read these keys).

    Attributes:
        dataset, method, run, fraction: the cell.
        seed: the final run's training seed.
        val_accuracy, test_accuracy: the final run's best validation accuracy and its test accuracy there.
        failure: why the final run diverged, or ``None``.
        compute: training runs, epochs, images and seconds the method used (search included).
        trainable_percent: share of the model's parameters it trained (averaged over the epochs run).
        seconds: wall time of the cell.
        details: what the method adds: LoRA's excluded layers; a tuned competitor's grid and choice; a
            search's strategy, genes, multipliers, candidates and search compute; a baseline's knobs.
        tuned: a baseline whose knobs were chosen on validation (``--tune-baselines``).
    """

    dataset: str
    method: str
    run: int
    fraction: float | None
    seed: int
    val_accuracy: float
    test_accuracy: float
    failure: str | None
    compute: dict
    trainable_percent: float
    seconds: float
    details: dict = field(default_factory=dict)
    tuned: bool = False

    def to_dict(self) -> dict:
        head = {"dataset": self.dataset, "method": self.method, "run": self.run, "fraction": self.fraction,
                "seed": self.seed}
        if self.tuned:
            head["tuned"] = True
        return {**head, **self.details, "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "failure": self.failure, "compute": self.compute, "trainable_percent": self.trainable_percent,
                "seconds": self.seconds}


def _run_one(session: Session, cell: _Cell, config: RunConfig, runtime: RuntimeConfig, options: CompareOptions,
             out: Path) -> dict:
    start = time.perf_counter()
    if cell.method in BASELINES:
        result, percent, details = _baseline(session, cell, config, options)
    elif cell.method in TUNED:
        found = TUNED.get(cell.method)(session, config, cell.seed, cell.final_seed, budget_match=options.budget_match)
        common = {k: found.pop(k) for k in ("val_accuracy", "test_accuracy", "failure", "compute")}
        result, percent, details = common, 100.0, found
    else:
        result, percent, details = _searched(session, cell, config, runtime, out)
    return CellRecord(cell.dataset, cell.method, cell.run, cell.fraction, cell.final_seed, **result,
                      trainable_percent=percent, seconds=time.perf_counter() - start, details=details,
                      tuned=cell.tuned).to_dict()


def _baseline(session: Session, cell: _Cell, config: RunConfig, options: CompareOptions) -> tuple[dict, float, dict]:
    """A baseline's final run (after tuning its knobs when the cell is tuned): result, trainable share, details."""
    if cell.tuned:
        done, tuning = tune_baseline(session, config, cell.method, cell.seed, cell.final_seed,
                                     kernels_only=options.sp_kernels_only)
    else:
        knobs = options.knobs(cell.method)
        done = perform_baseline(session, config, cell.method, knobs, None, cell.final_seed,
                                kernels_only=options.sp_kernels_only)
        tuning = Compute()
        done.details["knobs"] = knobs.to_dict()
    outcome = done.outcome
    result = {"val_accuracy": outcome.best_val_accuracy, "test_accuracy": float(outcome.test_accuracy or 0.0),
              "failure": outcome.failure, "compute": (tuning + Compute.of([outcome])).to_dict()}
    return result, done.trainable_percent, done.details


def _searched(session: Session, cell: _Cell, config: RunConfig, runtime: RuntimeConfig,
              out: Path) -> tuple[dict, float, dict]:
    """A search (BioTune's strategy, or the one the method names) and its final run."""
    blocks = session.blocks
    strategy = config.search.strategy if cell.method == "biotune" else cell.method
    search, selection, search_seconds = _search(session, cell, strategy, config, runtime, out)
    final = selection.result
    genes, run_ = final.genes, final.runs[0]
    estimate = {r.genes: r.fitness for r in search.ranking}
    details = {
        "strategy": strategy, "genes": list(genes), "search_seconds": search_seconds,
        "multipliers": [row["lr_multiplier"] for row in block_table(blocks, genes, config.train.lr)],
        "blocks": [b.name for b in blocks],
        "selected_by": selection.selected_by,
        "candidates": [{"genes": list(c.genes), "fitness": estimate.get(c.genes), "val_accuracy": c.val_accuracy_mean,
                        "test_accuracy": c.test_accuracy_mean, "trainable_percent": c.trainable_percent,
                        "label": c.label, "dropped_at": c.dropped_at, "curve": list(c.runs[0].val_accuracies)}
                       for c in selection.candidates],
        "search_compute": search.compute.to_dict(),
        "distinct_configurations": len(search.ranking),
    }
    result = {"val_accuracy": run_.val_accuracy, "test_accuracy": run_.test_accuracy, "failure": run_.failure,
              "compute": (search.compute + selection.compute).to_dict()}
    suffix = "" if cell.fraction is None else f"-p{cell.fraction:g}"
    stem = slug(Path(cell.dataset).stem or cell.dataset)
    plot_convergence(out / f"convergence-{stem}-{cell.method}-run{cell.run}{suffix}.png", search.generations)
    return result, final.trainable_percent, details


def _search(session: Session, cell: _Cell, strategy: str, config: RunConfig, runtime: RuntimeConfig,
            out: Path) -> tuple[SearchResult, Selection, float]:
    """One search (resumable from ``<out>/studies.db``) and its final phase with one seed: the top-k, or their race
    with FT."""
    s, seed, dataset, fraction = config.search, cell.seed, cell.dataset, cell.fraction
    method, run, final_seed = cell.method, cell.run, cell.final_seed
    spec = SessionSpec(config.model, dataclasses.replace(config.data, dataset=dataset), config.train, s.n_folds,
                       s.seed, runtime)
    study = f"{Path(dataset).stem or dataset}-{method}"
    start = time.perf_counter()
    with make_executor(runtime, spec, session) as executor:
        evaluator = FitnessEvaluator(executor, s.n_folds, training_seeds(seed, SEARCH_SEEDS, s.seeds),
                                     config.train.lr, session.settings_key)
        names = gene_names([b.name for b in session.blocks])
        suffix = "" if fraction is None else f"-p{fraction:g}"
        store = TrialStore(f"sqlite:///{(out / 'studies.db').resolve()}", f"{slug(study)}-run{run}{suffix}",
                           names, {"context": session.settings_key, "search": {**s.to_dict(), "strategy": strategy},
                                   "seed": seed})
        result = run_search(make_engine(strategy, len(session.blocks), s, seed), evaluator, store,
                            pruner=Pruner(s.pruner, config.train.epochs))
        seconds = time.perf_counter() - start
        top = [r.genes for r in result.top(s.top_k)]
        if s.final == "race":
            with tempfile.TemporaryDirectory(dir=out, prefix=".race-") as folder:
                selection = race(executor, top, session.blocks, session.splits.val[1], base_lr=config.train.lr,
                                 seed=final_seed, epochs=config.train.epochs, folder=folder)
        else:
            selection = select_final(executor, top, session.blocks, base_lr=config.train.lr, seeds=(final_seed,))
    return result, selection, seconds


def _write_outputs(out: Path, records: list[dict], datasets: list[str], methods: list[str], fractions,
                   metric: str = "top1") -> None:
    main = [r for r in records if r.get("fraction") is None]
    if main:
        table1 = accuracy_table(main, methods, datasets)
        table2 = trainable_table(main, methods, datasets)
        table4 = compute_table(main, methods, datasets)
        distance = distance_table(main, methods, datasets)
        for stem, table in (("table1_accuracy", table1), ("table2_trainable", table2), ("table4_compute", table4)):
            note = ""
            if stem == "table1_accuracy":
                note = f"\nMetric: {metric} accuracy ({'mean per-class recall' if metric == 'balanced' else 'top-1'}).\n"
                if distance is not None:
                    note += (f"\nDistance to {distance['reference']} (points of mean test accuracy):\n\n"
                             + to_markdown(distance))
            atomic_write_bytes(out / f"{stem}.md", (to_markdown(table) + note).encode())
            atomic_write_bytes(out / f"{stem}.csv", to_csv(table).encode())
            atomic_write_bytes(out / f"{stem}.tex", to_latex(table).encode())
        points: dict[str, dict[str, tuple[float, float]]] = {}
        for d in datasets:
            for m in methods:
                mine = [r for r in main if r["dataset"] == d and r["method"] == m and "compute" in r]
                if mine:
                    points.setdefault(d, {})[m] = (float(np.mean([r["compute"]["train_images"] for r in mine])),
                                                   100 * float(np.mean([r["test_accuracy"] for r in mine])))
        if points:
            plot_cost(out / "compare_cost.png", points, metric=metric)
        searched = [r for r in main if r["method"] == "biotune"]
        if searched:
            rows = []
            for d in datasets:
                mine = [r for r in searched if r["dataset"] == d]
                if mine:
                    best = max(mine, key=lambda r: r["val_accuracy"])  # the run shown: best on validation
                    rows.append((d, best["multipliers"]))
            plot_heatmap(out / "fig2_heatmap.png", searched[0]["blocks"], rows,
                         title="BioTune: LR multiplier per block (❄ frozen), best run per dataset (by validation)")
    if fractions:
        lines = ["| fraction | " + " | ".join(f"{d} accuracy (%) | {d} search (s)" for d in datasets) + " |",
                 "|" + "---|" * (1 + 2 * len(datasets))]
        for f in fractions:
            cells = []
            for d in datasets:
                mine = [r for r in records if r.get("fraction") == float(f) and r["dataset"] == d]
                cells += ([f"{100 * np.mean([r['test_accuracy'] for r in mine]):.2f}",
                           f"{np.mean([r['search_seconds'] for r in mine]):.0f}"] if mine else ["–", "–"])
            lines.append(f"| {f:g} | " + " | ".join(cells) + " |")
        atomic_write_bytes(out / "table3_fractions.md", ("\n".join(lines) + "\n").encode())
