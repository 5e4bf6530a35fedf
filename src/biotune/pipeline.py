"""The library's top-level calls: run a whole search, or apply a saved configuration.

:func:`run` is what ``biotune search`` does: validate every input, prepare data and model,
search, fine-tune the top-k configurations, choose on validation, write the run directory and
the fine-tuned model (``<run-dir>/model``, loadable by timm alone). :func:`finetune` is
``biotune finetune``: apply a ``best.json`` (possibly to another dataset or seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ._files import slug, write_json
from .config import READ_DEFAULTS, DataConfig, ModelConfig, RunConfig, RuntimeConfig, TrainConfig, parse_duration, resolve_image_size
from .errors import BioTuneError, redact_url, scrub
from .models.artifact import MODEL_DIR, ModelCard, save_model_dir
from .models.blocks import Block, partition_model
from .results import CandidateOutcome, FinetuneOutcome, SearchOutcome, SearchStop
from .search.engines import make_engine
from .search.evolution import batch_sizes
from .search.final import FinalResult, FinalRun, Selection, best_weights, select_final
from .search.fitness import FitnessEvaluator
from .search.genome import check_genome, decode
from .search.loop import SearchListener, SearchResult, run_search
from .search.pruning import Pruner
from .search.race import race
from .search.budget import TimeBudget, estimate_search
from .search.report import block_table, plot_convergence, plot_heatmap, plot_race, write_history_csv
from .search.study import TrialStore, gene_names
from .training.estimate import Estimate
from .training.executor import make_executor
from .training.groups import param_groups
from .training.memory import apply_fit
from .training.session import FINAL_SEEDS, SEARCH_SEEDS, Session, SessionSpec, training_seeds

WEIGHTS_DIR = "final_weights"  # best weights of each final candidate, until model/ is written

__all__ = ["RunResult", "Configuration", "SearchPlan", "run", "plan", "finetune", "load_configuration"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """Everything a search run produced (also on disk in ``run_dir``)."""

    run_dir: Path
    search: SearchResult
    selection: Selection
    blocks: tuple[Block, ...]
    outcome: SearchOutcome

    @property
    def best(self) -> dict[str, Any]:
        """The ``best.json`` document (:meth:`SearchOutcome.to_dict`)."""
        return self.outcome.to_dict()

    @property
    def final(self) -> FinalResult:
        """The chosen configuration's final runs."""
        return self.selection.result


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must repeat; reading options and the final phase at their defaults are
    left out, so that run directories written before those options existed still resume."""
    out = {k: v for k, v in config.items() if k in ("model", "data", "train", "search")}
    if isinstance(out.get("data"), dict):
        out["data"] = {k: v for k, v in out["data"].items() if READ_DEFAULTS.get(k, object()) != v}
    if isinstance(out.get("search"), dict) and out["search"].get("final") == "top-k":
        out["search"] = {k: v for k, v in out["search"].items() if k != "final"}
    return out


def _resolve_run_dir(run_dir: str | Path | None, config: RunConfig, dataset_name: str) -> Path:
    """The run directory: a given one (checked), or the latest matching one under runs/, or a new one."""
    wanted = _comparable(config.to_dict())
    if run_dir is None:
        stem = f"{slug(dataset_name)}-{slug(config.model.name)}"
        base = Path("runs")
        for existing in sorted(base.glob(f"{stem}-*"), reverse=True):
            cfg = existing / "config.json"
            try:
                if cfg.is_file() and _comparable(json.loads(cfg.read_text())) == wanted:
                    return existing
            except (OSError, ValueError):
                continue
        return base / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(run_dir).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BioTuneError(f"--run-dir {path} exists and is not a directory")
        cfg = path / "config.json"
        if cfg.is_file():
            try:
                stored = _comparable(json.loads(cfg.read_text()))
            except ValueError as err:
                raise BioTuneError(f"--run-dir {path}: config.json is not valid JSON ({err})") from None
            if stored != wanted:
                from .search.study import settings_diff

                diff = "; ".join(settings_diff(stored, wanted)[:5])
                raise BioTuneError(
                    f"--run-dir {path} holds a run with other settings ({diff}); "
                    "choose another --run-dir or repeat the same settings to resume"
                )
        elif any(not p.name.startswith(".") for p in path.iterdir()):  # ignore .lock and temporary files
            raise BioTuneError(f"--run-dir {path} is not empty and holds no BioTune run (no config.json)")
    return path


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BioTuneError(f"--run-dir {path} cannot be written ({err.strerror or err})") from None


@contextlib.contextmanager
def _run_dir_lock(path: Path):
    """Hold ``<run_dir>/.lock`` (an exclusive advisory lock) while a process works in ``path``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock_path = path / ".lock"
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise BioTuneError(
                f"--run-dir {path} is in use by another biotune process (pid {holder}); wait for it to finish, "
                "choose another --run-dir, or share a --storage deliberately"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(
    config: RunConfig | None = None,
    *,
    run_dir: str | Path | None = None,
    storage: str | None = None,
    runtime: RuntimeConfig | None = None,
    listener: SearchListener | None = None,
    time_limit: str | float | None = None,
) -> RunResult:
    """Search, fine-tune the best configuration, and write the run directory.

    Args:
        config: the run settings (default: ``RunConfig()``, the offline demo ``digits`` with
            EfficientNet-Lite0, the paper's budget and BioTune's default strategy; ``PRESETS["paper"]``
            for the paper's protocol).
        run_dir: where outputs go; an existing run directory with the same settings is
            resumed. ``None`` resumes the latest matching ``runs/<dataset>-<model>-*``
            or starts a new timestamped one.
        storage: an Optuna storage URL; default ``sqlite:///<run_dir>/study.db``.
        runtime: device and memory-format settings (not part of the result).
        listener: progress hooks.
        time_limit: wall time for the whole call (``"2h"``, ``"45m"``, seconds): the search
            asks no generation that, with the final phase, would not fit it (judged on the
            plan's estimate, then on measured times; see :class:`~biotune.search.budget.TimeBudget`)
            and finishes with the best it has. ``best.json`` records what stopped the search.
            Machine-dependent: a resumed run gets a new limit from its own start.

    Returns:
        The search history, the final result and the ``best.json`` content.

    Raises:
        BioTuneError: any invalid input, before the run directory is touched.

    Example:
        >>> from biotune import RunConfig, PRESETS
        >>> cfg = RunConfig().replace(**PRESETS["quick"])      # doctest: +SKIP
        >>> result = run(cfg, run_dir="runs/demo")             # doctest: +SKIP
        >>> result.best["test_accuracy_mean"]                  # doctest: +SKIP
    """
    start = time.perf_counter()
    config = config or RunConfig()
    runtime = runtime or RuntimeConfig()
    listener = listener or SearchListener()
    limit = _time_limit(time_limit)
    s = config.search
    spec = SessionSpec(config.model, config.data, config.train, s.n_folds, s.seed, runtime)
    session = Session.from_spec(spec)
    estimate = estimate_search(session, config, runtime)
    listener.on_estimate(estimate)
    estimate.memory.check()  # a run that cannot fit stops here, before anything is written
    fitted = apply_fit(runtime, estimate.memory.fit)  # what a memory limit chose, for this process and workers
    if fitted is not runtime:
        runtime = fitted
        spec = dataclasses.replace(spec, runtime=runtime)
        session.reconfigure(runtime)
    budget = None if limit is None else TimeBudget(limit, estimate, _generation_runs(config), start=start)
    if budget is not None:
        budget.check()  # a limit below one evaluation and one final run: refused before anything is written
        logger.info(budget.line())
    path = _resolve_run_dir(run_dir, config, session.dataset_name)
    document = _config_document(config, session, runtime, path, storage)
    names = gene_names([b.name for b in session.blocks])
    store = None
    if storage is not None:  # a storage of the user's: reachable? (before touching the run directory)
        store = _open_store(storage, path, names, document)
    _make_dir(path)
    # One process per run directory, unless the user shares an explicit storage on purpose.
    with _run_dir_lock(path) if storage is None else contextlib.nullcontext():
        store = store or _open_store(f"sqlite:///{(path / 'study.db').resolve()}", path, names, document)
        for stale in path.glob(".*.tmp"):  # left by a process killed while writing a report
            stale.unlink(missing_ok=True)
        if not (path / "config.json").is_file():
            write_json(path / "config.json", document)
        return _run_in(path, config, spec, session, store, runtime, listener, budget)


def _time_limit(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as err:
        raise BioTuneError(f"`time_limit`: {err}") from None


def _generation_runs(config: RunConfig) -> tuple[int, ...]:
    s = config.search
    return tuple(b * s.seeds for b in batch_sizes(s.population, s.elites, s.generations))


@dataclass(frozen=True)
class SearchPlan:
    """What :func:`run` would do, resolved and timed, without doing it (``--dry-run``).

    Attributes:
        resolved: settings that depend on the data and model (image size and why, blocks,
            classes, split sizes, weights, device).
        estimate: the measured time estimate.
        budget: the time limit judged on that estimate, when one is given.
        reading: how the dataset was read: kind, classes with counts, split sizes and where each came
            from, groups, files skipped, identical images across splits.
    """

    resolved: dict[str, Any]
    estimate: Estimate
    budget: TimeBudget | None = None
    reading: tuple[str, ...] = ()


def plan(config: RunConfig | None = None, *, runtime: RuntimeConfig | None = None,
         time_limit: str | float | None = None) -> SearchPlan:
    """Resolve every setting of a search and estimate its time (and how much of it fits
    ``time_limit``); writes nothing.

    Raises:
        BioTuneError: the same invalid inputs :func:`run` refuses.
    """
    config = config or RunConfig()
    runtime = runtime or RuntimeConfig()
    limit = _time_limit(time_limit)
    s = config.search
    session = Session.prepare(config.model, config.data, config.train, n_folds=s.n_folds, seed=s.seed, runtime=runtime)
    _, why = resolve_image_size(config.data.image_size, config.data.dataset, session.pretrained.input_size,
                                session.image_size)
    resolved = {
        "image_size": f"{session.image_size} ({why})",
        "dataset": f"{session.dataset_name}: {len(session.classes)} classes, {len(session.splits.x_train)} train / "
                   f"{len(session.splits.x_val)} val / {len(session.splits.x_test)} test images, "
                   f"{s.n_folds} folds of {session.splits.largest_fold}",
        "blocks": f"{len(session.blocks)} ({', '.join(b.name for b in session.blocks)})",
        "weights": session.pretrained.weights,
        "device": str(session.device),
    }
    estimate = estimate_search(session, config, runtime)
    budget = None if limit is None else TimeBudget(limit, estimate, _generation_runs(config))
    if budget is not None:
        budget.check()
    return SearchPlan(resolved, estimate, budget, session.reading)


def _open_store(url: str, path: Path, names, document) -> TrialStore:
    try:
        return TrialStore(url, f"biotune-{path.name}", names, _comparable(document))
    except BioTuneError as err:
        raise BioTuneError(f"--storage {redact_url(url)}: {scrub(str(err), url)}") from None


def _config_document(config: RunConfig, session: Session, runtime: RuntimeConfig, path: Path, storage) -> dict:
    """``config.json``: the settings, and what they resolved to (passwords redacted)."""
    s = config.search
    document = config.to_dict()
    document["resolved"] = {
        "weights": session.pretrained.weights,
        "image_size": session.image_size,
        "blocks": [b.name for b in session.blocks],
        "n_folds": s.n_folds,
        "search_seeds": list(training_seeds(s.seed, SEARCH_SEEDS, s.seeds)),
        "final_seeds": list(training_seeds(s.seed, FINAL_SEEDS, s.final_runs)),
        "storage": redact_url(storage or f"sqlite:///{(path / 'study.db').resolve()}"),
        "study_name": f"biotune-{path.name}",
        "device": str(session.device),
        "executor": runtime.executor,
    }
    return document


def _run_in(path, config, spec, session, store, runtime, listener, budget=None) -> RunResult:
    s = config.search
    engine = make_engine(s.strategy, len(session.blocks), s, s.seed)
    with make_executor(runtime, spec, session) as executor:
        evaluator = FitnessEvaluator(
            executor, s.n_folds, training_seeds(s.seed, SEARCH_SEEDS, s.seeds), config.train.lr, session.settings_key
        )
        result = run_search(engine, evaluator, store, listener=listener, budget=budget,
                            pruner=Pruner(s.pruner, config.train.epochs))
        selection = _final(path, session, executor, config, result, listener, budget)
        stop = SearchStop(
            stopped_by=result.stopped_by,
            generations_done=len(result.generations),
            generations_planned=len(_generation_runs(config)),
            time_limit_seconds=None if budget is None else budget.limit,
            pruner=s.pruner,
            evaluations_pruned=result.pruned,
            evaluations=sum(1 for r in result.history if r.source != "memo"),
        )
        rows = block_table(session.blocks, list(selection.result.genes), config.train.lr)
        model_dir = _deliver(path / MODEL_DIR, path / WEIGHTS_DIR, session, executor, config.train.lr, selection,
                             listener, rows, strategy=s.strategy)
        outcome = _outcome(session, config, result, selection, stop, str(model_dir))
    write_json(path / "best.json", outcome.to_dict())
    plot_heatmap(
        path / "heatmap.png", [b.name for b in session.blocks],
        [(f"{session.dataset_name}", [r["lr_multiplier"] for r in outcome.blocks])],
        title=f"BioTune configuration: {config.model.name} on {session.dataset_name}",
    )
    return RunResult(path, result, selection, session.blocks, outcome)


def _final(path, session, executor, config, result, listener, budget: TimeBudget | None = None) -> Selection:
    """Fine-tune the top-k configurations and choose on validation; finished runs are kept in
    final_runs.json (one entry per run, with its genes), so a resumed run repeats none. Under a
    time limit the phase shrinks to what is left: fewer seeds, then fewer candidates (the best
    first), at least the best candidate once. With ``final="race"``, :func:`_race` instead."""
    s = config.search
    write_history_csv(path / "history.csv", result.history, gene_names([b.name for b in session.blocks]))
    plot_convergence(path / "convergence.png", result.generations)
    candidates = [r.genes for r in result.top(s.top_k)]
    if s.final == "race":
        return _race(path, session, executor, config, candidates, listener, budget)
    final_seeds = training_seeds(s.seed, FINAL_SEEDS, s.final_runs)
    if budget is not None:
        fit = budget.final_runs_that_fit(len(candidates) * len(final_seeds))
        if fit < len(candidates) * len(final_seeds):
            final_seeds = final_seeds[:max(1, min(len(final_seeds), fit // max(1, len(candidates))))]
            candidates = candidates[:max(1, fit // len(final_seeds))]
            logger.warning("time limit: the final phase runs %d candidate(s) x %d seed(s) to fit what is left",
                           len(candidates), len(final_seeds))
    final_path = path / "final_runs.json"
    done: dict[tuple, FinalRun] = {}
    if final_path.is_file():
        for item in json.loads(final_path.read_text()):
            genes = tuple(item.pop("genes"))
            if genes in candidates and item["seed"] in final_seeds:
                done[(genes, item["seed"])] = FinalRun(**{**item, "val_accuracies": tuple(item.get("val_accuracies", ()))})
    finished = [(g, r) for (g, _), r in done.items()]

    def save(genes: tuple[float, ...], run_: FinalRun) -> None:
        finished.append((genes, run_))
        write_json(final_path, [{**r.to_dict(), "genes": list(g)} for g, r in finished])
        listener.on_final_run(run_)

    listener.on_final_start(len(candidates) * len(final_seeds) - len(done))
    return select_final(
        executor, candidates, session.blocks, base_lr=config.train.lr, seeds=final_seeds, done=done,
        weights_dir=path / WEIGHTS_DIR, on_run=save, on_epoch=listener.on_epoch,
    )


def _race(path, session, executor, config, candidates, listener, budget: TimeBudget | None) -> Selection:
    """Race the top-k and plain FT (:mod:`biotune.search.race`), resumable from ``race/``; under a time
    limit only the best candidates that fit race FT. Each racer's curve goes to ``race.png``."""
    if budget is not None:
        fit = budget.final_runs_that_fit(len(candidates) + 1)
        if fit < len(candidates) + 1:
            candidates = candidates[:max(1, fit - 1)]
            logger.warning("time limit: the race runs FT and the best %d candidate(s) to fit what is left",
                           len(candidates))
    listener.on_final_start(len(candidates) + 1)
    selection = race(
        executor, candidates, session.blocks, session.splits.val[1], base_lr=config.train.lr,
        seed=training_seeds(config.search.seed, FINAL_SEEDS, 1)[0], epochs=config.train.epochs,
        folder=path / "race", weights_dir=path / WEIGHTS_DIR, on_epoch=listener.on_epoch,
        on_lap=lambda racer, stage, outcome: listener.on_final_run(outcome) if not outcome.paused else None,
    )
    plot_race(path / "race.png", selection, title=f"final race on {session.dataset_name}")
    return selection


def _deliver(folder: Path, weights_dir: Path, session: Session, executor, base_lr: float, selection: Selection,
             listener, blocks: list[dict], **extra) -> Path:
    """Write ``folder`` (timm layout) from the chosen configuration's best run, unless already there.

    The final runs' weights (one file per candidate) are removed once the folder is in place.
    """
    final = selection.result
    run_ = final.best_run
    chosen = {"genes": list(final.genes), "seed": run_.seed}
    config_file = folder / "config.json"
    if config_file.is_file():
        mine = json.loads(config_file.read_text()).get("biotune", {})
        if {k: mine.get(k) for k in chosen} == chosen:
            shutil.rmtree(weights_dir, ignore_errors=True)
            return folder
    weights = best_weights(executor, selection, base_lr=base_lr, weights_dir=weights_dir, on_epoch=listener.on_epoch)
    card = ModelCard(
        architecture=session.pretrained.name, classes=session.classes, image_size=session.image_size,
        read_size=session.read_size, mean=session.pretrained.mean, std=session.pretrained.std,
        dataset=session.dataset_name, blocks=tuple(blocks),
        metrics={"val_accuracy": run_.val_accuracy, "test_accuracy": run_.test_accuracy,
                 "test_accuracy_mean_over_final_runs": final.test_accuracy_mean},
        extra={**chosen, "weights": session.pretrained.weights, "selected_by": selection.selected_by, **extra},
    )
    save_model_dir(folder, weights, card)
    shutil.rmtree(weights_dir, ignore_errors=True)
    return folder


def _outcome(session: Session, config: RunConfig, result: SearchResult, selection: Selection, stop: SearchStop,
             model_dir: str = "") -> SearchOutcome:
    final = selection.result
    genes = list(final.genes)
    estimate = {r.genes: r for r in result.ranking}
    search_compute, final_compute = result.compute, selection.compute
    return SearchOutcome(
        genes=tuple(genes[:-1]),
        threshold=genes[-1],
        blocks=tuple(block_table(session.blocks, genes, config.train.lr)),
        strategy=config.search.strategy,
        metric=config.train.metric,
        selected_by=selection.selected_by,
        candidates=tuple(
            CandidateOutcome(
                genes=tuple(c.genes[:-1]),
                threshold=c.genes[-1],
                fitness=estimate[c.genes].fitness if c.genes in estimate else None,
                search_runs=estimate[c.genes].runs if c.genes in estimate else 0,
                val_accuracy=c.val_accuracy_mean,
                test_accuracy=c.test_accuracy_mean,
                trainable_percent=c.trainable_percent,
                chosen=i == selection.chosen,
                label=c.label,
                dropped_at=c.dropped_at,
                curve=c.runs[0].val_accuracies if selection.raced else (),
            )
            for i, c in enumerate(selection.candidates)
        ),
        fitness=estimate[final.genes].fitness if final.genes in estimate else None,
        val_accuracy_search=1.0 - estimate[final.genes].fitness if final.genes in estimate else None,
        initial_population_mean_fitness=result.initial_mean_fitness,
        compute={"search": search_compute.to_dict(), "final": final_compute.to_dict(),
                 "total": (search_compute + final_compute).to_dict()},
        test_accuracy_mean=final.test_accuracy_mean,
        test_accuracy_se=final.test_accuracy_se,
        test_accuracies=tuple(r.test_accuracy for r in final.runs),
        val_accuracy_final_mean=final.val_accuracy_mean,
        trainable_percent=final.trainable_percent,
        final_failures=tuple(f"seed {r.seed}: {r.failure or 'diverged'}" for r in final.runs if r.diverged),
        model=config.model.to_dict(),
        train=config.train.to_dict(),
        base_lr=config.train.lr,
        dataset=session.dataset_name,
        num_classes=session.pretrained.num_classes,
        image_size=session.image_size,
        weights=session.pretrained.weights,
        search_stop=stop,
        model_dir=model_dir,
    )


@dataclass(frozen=True)
class Configuration:
    """A saved per-block configuration (the content of ``best.json`` that matters to reuse it).

    Attributes:
        genes: full genome, block genes then the threshold.
        model: the model settings it was found for.
        block_names: the partition's block names, to check a model matches.
    """

    genes: tuple[float, ...]
    model: ModelConfig
    block_names: tuple[str, ...]
    train: TrainConfig | None = None
    image_size: int | None = None
    source: str = "configuration"

    def check_blocks(self, blocks: Sequence[Block], source: str | None = None) -> None:
        source = source or self.source
        names = tuple(b.name for b in blocks)
        if len(names) != len(self.block_names):
            raise BioTuneError(
                f"{source} has {len(self.block_names)} blocks but model {self.model.name!r} "
                f"({self.model.granularity}) has {len(names)}"
            )
        if names != self.block_names:
            bad = next(i for i, (a, b) in enumerate(zip(names, self.block_names)) if a != b)
            raise BioTuneError(
                f"{source} does not fit this model: block {bad} is {self.block_names[bad]!r} there, {names[bad]!r} here"
            )

    def param_groups(self, model: torch.nn.Module, base_lr: float) -> list[dict]:
        """Parameter groups for any torch optimizer: one per trainable block at λ_b.

        Example:
            >>> cfg = load_configuration("runs/demo/best.json")         # doctest: +SKIP
            >>> opt = torch.optim.Adam(cfg.param_groups(model, 1e-3))  # doctest: +SKIP
        """
        blocks = partition_model(model, self.model.granularity, partition=self.model.partition)
        self.check_blocks(blocks)
        return param_groups(model, blocks, decode(np.asarray(self.genes), base_lr).lrs)


def load_configuration(path: str | Path) -> Configuration:
    """Read a ``best.json`` written by :func:`run`.

    Raises:
        BioTuneError: missing file, invalid JSON, missing keys, invalid genome.
    """
    path = Path(path).expanduser()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BioTuneError(f"--config {path} does not exist") from None
    except (OSError, ValueError) as err:
        raise BioTuneError(f"--config {path} is not a readable JSON file ({err})") from None
    missing = [k for k in ("genes", "threshold", "blocks", "model") if k not in doc]
    if not isinstance(doc, dict) or missing:
        raise BioTuneError(f"--config {path} is not a BioTune best.json (missing {', '.join(missing)})")
    try:
        genes = check_genome(list(doc["genes"]) + [doc["threshold"]], len(doc["blocks"]))
        decode(genes, 1.0)
        model = ModelConfig.from_dict(doc["model"])
        names = tuple(b["name"] for b in doc["blocks"])
        train = TrainConfig.from_dict(doc["train"]) if "train" in doc else None
        image_size = doc.get("image_size")
    except (TypeError, KeyError) as err:
        raise BioTuneError(f"--config {path}: malformed ({err})") from None
    except BioTuneError as err:
        raise BioTuneError(f"--config {path}: {err}") from None
    return Configuration(tuple(float(g) for g in genes), model, names, train, image_size, source=f"--config {path}")


def finetune_model_dir(configuration: str | Path, dataset: str) -> Path:
    """Where ``biotune finetune`` saves its model by default: ``finetune-<dataset>/model`` beside the
    configuration file."""
    return Path(configuration).expanduser().parent / f"finetune-{slug(Path(dataset).stem or dataset)}" / "model"


def finetune(
    configuration: Configuration | str | Path,
    *,
    data: DataConfig | None = None,
    train: TrainConfig | None = None,
    runs: int = 3,
    seed: int = 0,
    weights: str | None = None,
    runtime: RuntimeConfig | None = None,
    listener: SearchListener | None = None,
    model_dir: str | Path | None = None,
) -> FinetuneOutcome:
    """Fine-tune with a saved configuration on a dataset; test accuracy over ``runs`` seeds.

    Args:
        configuration: a :class:`Configuration` or the path of a ``best.json``.
        data: the dataset (default ``digits``); may differ from the one searched on.
        train: training settings (default: ``TrainConfig()``, the paper's budget).
        runs: number of runs (seeds).
        seed: run seed (splits and training seeds).
        weights: override the configuration's weights source.
        model_dir: where the best run (by validation accuracy) is saved as a model folder
            (see :mod:`biotune.artifact`); ``None`` saves none.
    """
    cfg = configuration if isinstance(configuration, Configuration) else load_configuration(configuration)
    model = cfg.model if weights is None else dataclasses.replace(cfg.model, weights=weights)
    train = train or TrainConfig()
    if runs < 1:
        raise BioTuneError(f"`runs` must be at least 1, got {runs}")
    runtime = runtime or RuntimeConfig()
    spec = SessionSpec(model, data or DataConfig(), train, 1, seed, runtime)
    session = Session.from_spec(spec)
    cfg.check_blocks(session.blocks)
    listener = listener or SearchListener()
    listener.on_final_start(runs)
    model_dir = None if model_dir is None else Path(model_dir).expanduser()
    with contextlib.ExitStack() as stack:
        weights_dir = None
        if model_dir is not None:
            model_dir.parent.mkdir(parents=True, exist_ok=True)
            weights_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=model_dir.parent, prefix=".weights-")))
        executor = stack.enter_context(make_executor(runtime, spec, session))
        selection = select_final(
            executor, [cfg.genes], session.blocks, base_lr=train.lr, seeds=training_seeds(seed, FINAL_SEEDS, runs),
            weights_dir=weights_dir, on_run=lambda genes, run_: listener.on_final_run(run_), on_epoch=listener.on_epoch,
        )
        rows = block_table(session.blocks, list(cfg.genes), train.lr)
        if model_dir is not None:
            _deliver(model_dir, weights_dir, session, executor, train.lr, selection, listener, rows,
                     configuration=cfg.source)
    return FinetuneOutcome(selection.result, session.blocks, tuple(rows), session.dataset_name, model_dir)
