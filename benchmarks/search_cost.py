"""What a search costs in FT runs, and what it buys: ``biotune search`` as a user runs it (the
default quick preset and its final phase), arm by arm, on the four shared datasets at 64 px.

    python benchmarks/search_cost.py run WORK [--runs 3] [--jobs 2] [--deadline SECONDS]
    python benchmarks/search_cost.py summary WORK OUT

``run`` expects ``WORK/<name>.npz`` (``search_quality.py prepare``) and runs every job (a search
is skipped once its ``best.json`` exists, compare skips its finished cells), ``--jobs`` at a time
with one thread each, run by run, so a cut-off benchmark leaves every arm with as many runs;
no job starts after ``--deadline`` seconds. Arms, on the same seeds and splits (run r: ``--seed r``):

- ``ref``: the default, TPE alone, top-3 × 2 seeds (the accuracy reference);
- ``today``: the default before, TPE + warm start + median pruner;
- ``race``: the reference's search with ``--final race``;
- ``small``: ``--final race`` with a smaller search: 4 + 6 evaluations on half the data (``SMALL``);
- ``new``: ``--final race`` with 6 + 10 evaluations on a quarter of the data (``NEW``);
- ``cmaes``, ``structured``: the reference with ``--strategy cmaes`` (CMA-ES over the genome space)
  or ``--strategy structured`` (TPE over Quick-Tune's four numbers);
- ``ftlr``, ``ft``: ``biotune compare``'s tuned-LR FT at ``small``'s search budget (10 runs on
  half the data, then its final run: about 6 FTx), and FT.

``summary`` prints ``search-cost: <dataset> new=<acc>@<FTx> ref=... today=... ftlr=...`` per dataset
(accuracy: the chosen configuration's mean test accuracy over its final runs, in %; FTx: training
images of the whole job / those of one FT run of the same epochs), a ``mean`` line, the targets of
issue 31, and each arm's selection regret (test accuracy of the chosen candidate against the best
of the candidates it chose among), and writes ``OUT/summary.txt`` and ``OUT/runs.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DATASETS = ("mnist", "usps", "cifar10", "flowers102")
COMMON = ["--image-size", "64", "--no-progress", "--threads", "1"]
NEW = ["--final", "race", "--population", "6", "--elites", "2", "--generations", "1", "--fraction", "0.25"]
SMALL = ["--final", "race", "--population", "4", "--elites", "1", "--generations", "1"]
ARMS = {"small": SMALL, "ref": [], "today": ["--warm-start", "--pruner", "median"], "new": NEW,
        "race": ["--final", "race"], "cmaes": ["--strategy", "cmaes"], "structured": ["--strategy", "structured"]}
LAST = ("new", "race", "cmaes", "structured")  # run after every other job: the arms that only explain
SHOWN = ("small", "new", "ref", "today", "ftlr", "race", "cmaes", "structured", "ft")
PAIRED = ("race", "small", "today", "new", "cmaes", "structured")


def _jobs(work: Path, runs: int, only: str | None = None) -> list[tuple[str, list[str], Path]]:
    """Every job, run by run; the arms in :data:`LAST` after all the others, except that the first two
    runs of ``race`` (the race alone, on the reference's search) come before the third run.

    ``only`` (``"cmaes:0,1 race:2 cmp:2"``): just these arms' runs, in this order (``cmp``: ft/ftlr)."""
    if only:
        every = {job[0]: job for job in _jobs(work, runs)}
        out = []
        for part in only.split():
            arm, _, numbers = part.partition(":")
            for r in (int(x) for x in numbers.split(",")):
                for d in DATASETS:
                    out.append(every[f"ft/ftlr {d} run {r}" if arm == "cmp" else f"{arm} {d} run {r}"])
        return out
    jobs, last = [], []
    for r in range(runs):
        if r == 2:
            jobs += [job for job in last if job[0].startswith("race ")]
            last = [job for job in last if not job[0].startswith("race ")]
        for d in DATASETS:
            for arm, flags in ARMS.items():
                folder = work / arm / f"{d}-{r}"
                (last if arm in LAST else jobs).append(
                    (f"{arm} {d} run {r}", ["biotune", "search", "--data-dir", str(work), "--dataset", d,
                                            "--seed", str(r), "--run-dir", str(folder), *COMMON, *flags],
                     folder / "best.json"))
            folder = work / "cmp-small" / f"{d}-{r}"
            jobs.append((f"ft/ftlr {d} run {r}", ["biotune", "compare", "--data-dir", str(work), "--datasets", d,
                                                   "--methods", "ft,ftlr", "--seed", str(r), "--runs", "1",
                                                   "--out", str(folder), *COMMON, *SMALL[2:]], None))
    return jobs + last


def run(work: Path, runs: int, jobs: int, deadline: float, only: str | None = None) -> None:
    start = time.time()
    (work / "logs").mkdir(parents=True, exist_ok=True)

    def one(job) -> None:
        name, command, done = job
        if done is not None and done.is_file():
            return
        if time.time() - start > deadline:
            print(f"deadline: {name} not started", flush=True)
            return
        log = work / "logs" / (name.replace(" ", "_").replace("/", "-") + ".log")
        t0 = time.time()
        with open(log, "a") as fh:
            code = subprocess.call(command, stdout=fh, stderr=subprocess.STDOUT)
        print(f"{name}: exit {code} in {time.time() - t0:.0f} s", flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, _jobs(work, runs, only)))


def _records(work: Path) -> list[dict]:
    """One record per finished job: arm, dataset, run, test accuracy, training images, regret."""
    out = []
    for best in sorted(work.glob("*/*-*/best.json")):
        arm, (dataset, run_) = best.parent.parent.name, best.parent.name.rsplit("-", 1)
        b = json.loads(best.read_text())
        tests = [c["test_accuracy"] for c in b["candidates"]]
        chosen = next(c["test_accuracy"] for c in b["candidates"] if c["chosen"])
        out.append({"arm": arm, "dataset": dataset, "run": int(run_), "test_accuracy": b["test_accuracy_mean"],
                    "train_images": b["compute"]["total"]["train_images"], "regret": max(tests) - chosen,
                    "epochs": b["train"]["epochs"],
                    "dropped": sum(c.get("dropped_at") is not None for c in b["candidates"])})
    for ledger in sorted(work.glob("cmp-small/*-*/runs.jsonl")):
        run_ = int(ledger.parent.name.rsplit("-", 1)[1])
        for line in ledger.read_text().splitlines():
            r = json.loads(line)
            out.append({"arm": r["method"], "dataset": Path(r["dataset"]).stem, "run": run_,
                        "test_accuracy": r["test_accuracy"], "train_images": r["compute"]["train_images"],
                        "epochs_run": r["compute"]["epochs"], "regret": None})
    return out


def summary(work: Path | None, out: Path, extra: list[Path] = ()) -> None:
    """Print and write the summary of ``work``'s jobs and of the records in ``extra`` (``runs.jsonl``
    files of earlier summaries, e.g. from other machines; a later record of the same arm, dataset and
    run replaces an earlier one)."""
    records = _records(work) if work is not None else []
    for path in extra:
        records += [json.loads(line) for line in path.read_text().splitlines()]
    records = list({(r["arm"], r["dataset"], r["run"]): r for r in records}.values())
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    epochs = next((r["epochs"] for r in records if "epochs" in r), 4)
    lines, table = [], {}
    for d in DATASETS:
        ft = [r for r in records if r["dataset"] == d and r["arm"] == "ft"]
        if not ft:
            continue
        per_image = np.mean([r["train_images"] / r["epochs_run"] for r in ft])  # training images per epoch
        unit = per_image * epochs
        for arm in SHOWN:
            rs = [r for r in records if r["dataset"] == d and r["arm"] == arm]
            if rs:
                table[d, arm] = (100 * np.mean([r["test_accuracy"] for r in rs]),
                                 np.mean([r["train_images"] for r in rs]) / unit, len(rs),
                                 [100 * r["regret"] for r in rs if r["regret"] is not None])
        lines.append(f"search-cost: {d} " + " ".join(
            f"{arm}={table[d, arm][0]:.2f}@{table[d, arm][1]:.1f}" for arm in SHOWN if (d, arm) in table))
    datasets = sorted({d for d, _ in table}, key=DATASETS.index)
    means = {arm: (np.mean([table[d, arm][0] for d in datasets]), np.mean([table[d, arm][1] for d in datasets]))
             for arm in SHOWN if all((d, arm) in table for d in datasets)}
    lines.append("search-cost: mean " + " ".join(f"{a}={m[0]:.2f}@{m[1]:.1f}" for a, m in means.items()))
    lines.append("runs per cell: " + " ".join(f"{d}/{a}={table[d, a][2]}" for d, a in table))
    for arm in ("ref", *PAIRED):
        regret = [x for d in datasets if (d, arm) in table for x in table[d, arm][3]]
        if regret:
            lines.append(f"selection regret {arm}: mean {np.mean(regret):.2f} points, max {np.max(regret):.2f} "
                         f"(chosen vs best candidate on test, {len(regret)} runs)")
    ref = {(r["dataset"], r["run"]): r["test_accuracy"] for r in records if r["arm"] == "ref"}
    for arm in PAIRED:
        diffs = [100 * (r["test_accuracy"] - ref[r["dataset"], r["run"]]) for r in records
                 if r["arm"] == arm and (r["dataset"], r["run"]) in ref]
        if len(diffs) > 1:
            lines.append(f"paired with ref (same dataset, run and seed): {arm} - ref = {np.mean(diffs):+.2f} "
                         f"± {np.std(diffs, ddof=1) / np.sqrt(len(diffs)):.2f} (SE) points over {len(diffs)} runs")
    for arm in ("small", "new"):
        if arm not in means or "ref" not in means or not all((d, "ref") in table for d in datasets):
            continue
        worst = min(table[d, arm][0] - table[d, "ref"][0] for d in datasets)
        wins = sum(table[d, arm][0] >= table[d, "ftlr"][0] for d in datasets if (d, "ftlr") in table)
        gap = means[arm][0] - means["ref"][0]
        lines.append(f"targets ({arm}): mean FTx {means[arm][1]:.1f} (<= 8: {means[arm][1] <= 8}); "
                     f"{arm} - ref {gap:+.2f} (>= -0.5: {gap >= -0.5}); worst dataset {worst:+.2f} "
                     f"(>= -2: {worst >= -2}); {arm} >= ftlr on {wins} of {len(datasets)} (>= 3: {wins >= 3})")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (out / "summary.txt").write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("work", type=Path)
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--deadline", type=float, default=float("inf"))
    r.add_argument("--only", default=None, help='just these arms\' runs, in this order, e.g. "cmaes:0,1 cmp:2"')
    s = sub.add_parser("summary")
    s.add_argument("work", type=Path, help="the run's WORK folder, or - for none (only --records)")
    s.add_argument("out", type=Path)
    s.add_argument("--records", type=Path, nargs="*", default=[],
                   help="runs.jsonl files of earlier summaries to merge (later ones win)")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.work, args.runs, args.jobs, args.deadline, args.only)
    else:
        summary(None if str(args.work) == "-" else args.work, args.out, args.records)


if __name__ == "__main__":
    sys.exit(main())
