"""Scale of the data path (issue 21): memory per training image, a 40,000-image search at 224 px, the
throughput of the uint8 path against the old float path, and an epoch's time split.

    python benchmarks/data_scale.py --old-src DIR [--out benchmarks/results/data_scale.json]

``DIR`` is a checkout of BioTune before the store (``git archive <commit> | tar -x -C DIR``): its
``src`` runs the old path (a float32 copy of every split, per process) side by side with this
checkout's. Every figure is measured in its own subprocess and printed as it lands:

1. **memory per training image** at 224 px, a search process and each of 2 workers (spawned, holding
   their sessions at once, every image read once): the growth of resident memory (RSS), of what
   the process alone holds (USS) and of its share of shared pages (PSS), over the session, divided
   by the training images (validation and test images are held too). The baseline is taken after a
   session on ``digits`` at the same size (libraries imported, torch's first allocations made), so
   the growth is the dataset's. The new path's store is written beforehand, as a first run would
   have left it. A synthetic set stored at 224 px (2,000 images, 150 KB uint8 each) and USPS
   (7,291 training images stored at 16 px).
2. **a 40,000-image, 40-class .npz stored at 64 px, searched at --image-size 224** (test_efficientnet,
   random weights, quick preset, one epoch): peak resident memory of the whole process tree (sum of
   RSS, sampled every 0.2 s) until the first evaluation is in the study; the old path is only
   computed (its float copy alone: N x 602 KB).
3. **throughput side by side**: one full fine-tuning run (every block trains, so every batch goes
   through the data path) on 2,000 USPS images at 224 px, old and new alternately, 3 times each;
   training images per second of the best of each.
4. **an epoch's time split** on the CPU: gathering + converting the batches against the training
   steps, test_efficientnet and efficientnet_lite0 at 224 px.
5. **old and new numbers** (``--only equivalence``): the quick default on digits (best fitness and
   test accuracy in best.json), and the fitness of three configurations (full fine-tuning, the
   head alone, the last half of the blocks) on 2,000 USPS images at 64 px, with the old and the
   new path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SHARED = Path(os.environ.get("BIOTUNE_SHARED_DIR", HERE.parents[1] / "shared")) / "data"


def _env(src: Path, data: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src), "BIOTUNE_DATA": str(data), "PYTHONUNBUFFERED": "1"}


def _child(args: list[str], src: Path, data: Path, timeout: float = 3600) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], env=_env(src, data), capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ in a child process
def _session(dataset: str, size: int, model: str = "test_efficientnet", batch: int = 64):
    from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
    from biotune.training.session import Session

    return Session.prepare(ModelConfig(model, "random"), DataConfig(dataset, image_size=size),
                           TrainConfig(epochs=1, batch_size=batch), n_folds=2, seed=0,
                           runtime=RuntimeConfig(threads=1, cache_memory="0"))


def _touch(session) -> None:
    """Read every image once (as an epoch and an evaluation would)."""
    for name in ("x_train", "x_val", "x_test"):
        x = getattr(session.splits, name)
        for i in range(0, len(x), 256):
            x[i : i + 256]


def _memory() -> dict:
    import psutil

    m = psutil.Process().memory_full_info()
    return {"rss": m.rss, "uss": m.uss, "pss": m.pss}


def _hold(dataset: str, size: int, barrier, queue) -> None:
    import torch

    torch.set_num_threads(1)
    _touch(_session("digits", size))  # imports, torch's first allocations: in the baseline, not the data's share
    before = _memory()
    session = _session(dataset, size)
    _touch(session)
    barrier.wait()  # every worker holds its session: shared pages are shared now
    after = _memory()
    queue.put({k: after[k] - before[k] for k in after} | {"images": len(session.splits.x_train)})
    barrier.wait()


def measure_memory(dataset: str, size: int, workers: int) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(dataset, size, barrier, queue)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    n = results[0]["images"]
    return {"processes": workers, "images": n,
            **{f"{k}_per_image": sum(r[k] for r in results) / workers / n for k in ("rss", "uss", "pss")}}


def measure_throughput(dataset: str, size: int) -> dict:
    import torch

    from biotune.training.session import RunRequest

    torch.set_num_threads(1)
    session = _session(dataset, size)
    lrs = (1e-3,) * len(session.blocks)
    outcome = session.perform(RunRequest(lrs, 0, 0))
    return {"images_per_second": outcome.train_images / outcome.seconds, "seconds": outcome.seconds,
            "train_images": outcome.train_images}


def measure_fitness(dataset: str, size: int) -> dict:
    import torch

    from biotune.training.session import RunRequest

    torch.set_num_threads(2)
    session = _session(dataset, size, model="efficientnet_lite0")
    n = len(session.blocks)
    configs = {"FT": (1e-3,) * n, "head": (0.0,) * (n - 1) + (1e-3,),
               "last half": (0.0,) * (n - n // 2) + (1e-3,) * (n // 2)}
    out = {}
    for name, lrs in configs.items():
        r = session.perform(RunRequest(lrs, 0, 0))
        out[name] = {"best_val_accuracy": r.best_val_accuracy, "val_accuracies": list(r.val_accuracies)}
    return out


def default_digits(work: Path, src: Path, label: str) -> dict:
    run_dir = work / f"default-{label}"
    subprocess.run([sys.executable, "-m", "biotune", "search", "--run-dir", str(run_dir), "--no-progress",
                    "--threads", "2"], env=_env(src, work / f"data-{label}"), check=True, capture_output=True,
                   timeout=3600)
    best = json.loads((run_dir / "best.json").read_text())
    return {k: best[k] for k in ("fitness", "test_accuracy_mean", "genes", "threshold")}


def equivalence(old: Path, work: Path, report) -> None:
    subset = _usps_subset(work)
    for label, src in (("old", old), ("new", SRC)):
        report(f"equivalence/fitness/{label}", _child(["_fitness", str(subset), "64"], src, work / f"data-{label}"))
    for label, src in (("old", old), ("new", SRC)):
        report(f"equivalence/default_digits/{label}", default_digits(work, src, label))


def _usps_subset(work: Path) -> Path:
    import numpy as np

    subset = work / "usps-2000.npz"
    if not subset.is_file():
        with np.load(SHARED / "usps.npz") as z:
            np.savez(subset, x_train=z["x_train"][:2000], y_train=z["y_train"][:2000], x_test=z["x_test"][:500],
                     y_test=z["y_test"][:500], classes=z["classes"])
    return subset


def measure_split(dataset: str, size: int, model: str, images: int) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    session = _session(dataset, size, model=model)
    x, y = session.splits.x_train, session.splits.y_train
    net = session.finetuner.model.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:images]
    data = compute = 0.0
    for i in range(0, len(order), 64):
        idx = order[i : i + 64]
        t0 = time.perf_counter()
        xb = x[idx]
        t1 = time.perf_counter()
        loss = nn.functional.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        data, compute = data + t1 - t0, compute + t2 - t1
    return {"model": model, "images": images, "data_seconds": data, "compute_seconds": compute,
            "data_share": data / (data + compute)}


# ------------------------------------------------------------------ driver
def _synthetic(path: Path, n: int, classes: int, side: int, seed: int = 0) -> Path:
    import numpy as np

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    # Class-dependent colour blobs on noise: learnable, and compressible enough to write quickly.
    x = rng.integers(0, 64, (n, side, side, 3), dtype=np.uint8)
    x[..., 0] += (y * (192 // classes)).astype(np.uint8)[:, None, None]
    n_test = n // 10
    np.savez(path, x_train=x[n_test:], y_train=y[n_test:], x_test=x[:n_test], y_test=y[:n_test],
             classes=np.array([f"c{i}" for i in range(classes)]))
    return path


def _tree_rss(pid: int) -> dict[int, int]:
    """Resident memory of each process of the tree under ``pid`` (empty once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        out = {}
        for p in [root, *root.children(recursive=True)]:
            try:
                out[p.pid] = p.memory_info().rss
            except psutil.Error:
                pass
        return out
    except psutil.Error:
        return {}


def search_peak(dataset: Path, work: Path, cache_memory: str = "2G", evaluations: int = 1,
                memory_limit: str | None = None) -> dict:
    """Peak RSS of a `biotune search` process tree until its first ``evaluations`` evaluations are stored."""
    run_dir = work / f"run40k-cache{cache_memory}-limit{memory_limit}"
    cmd = [sys.executable, "-m", "biotune", "search", "--dataset", str(dataset), "--image-size", "224",
           "--model", "test_efficientnet", "--weights", "random", "--preset", "quick", "--epochs", "1",
           "--threads", "2", "--run-dir", str(run_dir), "--no-progress"]
    if cache_memory != "auto":  # auto: the plan sizes the cache from --memory-limit's default
        cmd += ["--cache-memory", cache_memory]
    if memory_limit:
        cmd += ["--memory-limit", memory_limit]
    return tree_peak_until(cmd, _env(SRC, work / "data"), run_dir, evaluations)


def tree_peak_until(cmd: list[str], env: dict, run_dir: Path, evaluations: int) -> dict:
    """Run ``cmd`` (a ``biotune search`` writing ``run_dir``) until ``evaluations`` evaluations are in its
    study, sampling the resident memory of its process tree every 0.2 s; then stop it. Returns the peak,
    the seconds it took and the plan's ``memory`` lines."""
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, first = 0, None
    per_process: dict[int, int] = {}  # each process's own peak: which one carries the tree's
    timeline: list[list] = []  # [seconds, tree RSS]: the peak of each 10 s, to see which phase sets it
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        sample = _tree_rss(proc.pid)
        tree = sum(sample.values())
        peak = max(peak, tree)
        for pid, rss in sample.items():
            per_process[pid] = max(per_process.get(pid, 0), rss)
        now = time.perf_counter() - start
        if not timeline or now >= timeline[-1][0] + 10:
            timeline.append([10 * int(now // 10), tree])
        timeline[-1][1] = max(timeline[-1][1], tree)
        db = run_dir / "study.db"
        if db.is_file():
            try:
                with sqlite3.connect(db) as con:
                    done = con.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED')").fetchone()[0]
            except sqlite3.Error:
                done = 0
            if done >= evaluations:
                first = time.perf_counter() - start
                break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    if first is None:
        raise RuntimeError(f"the search ended before {evaluations} evaluation(s):\n" + "".join(lines[-40:]))
    return {"peak_tree_rss": peak, "evaluations": evaluations, "seconds_to_first_evaluation" if evaluations == 1
            else "seconds": first, "plan": [line.strip() for line in lines if line.startswith("memory")],
            "peak_per_process": sorted(per_process.values(), reverse=True), "timeline": timeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-src", type=Path, required=True, help="a checkout of BioTune before the store")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "data_scale.json")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "biotune-data-scale")
    parser.add_argument("--search-cache-memory", default=None,
                        help="only measure the 40,000-image search, with this --cache-memory ('auto': the planned default)")
    parser.add_argument("--search-evaluations", type=int, default=1,
                        help="with --search-cache-memory: measure until this many evaluations are stored")
    parser.add_argument("--search-memory-limit", default=None,
                        help="with --search-cache-memory: the search's --memory-limit (the plan then fits the cache to it)")
    parser.add_argument("--only", choices=("scale", "equivalence"), default=None,
                        help="run one part (default: both; results are merged into --out)")
    args = parser.parse_args()
    work = args.work
    (work / "data").mkdir(parents=True, exist_ok=True)
    old = args.old_src.resolve() / "src"
    results: dict = json.loads(args.out.read_text()) if args.out.is_file() else {}

    def report(key, value):
        results[key] = value
        print(f"{key}: {json.dumps(value)}", flush=True)
        args.out.write_text(json.dumps(results, indent=1))

    if args.search_cache_memory:
        big = _synthetic(work / "synthetic-40000-64px.npz", 40000, 40, 64)
        key = f"search40k/new/cache-memory-{args.search_cache_memory}"
        if args.search_evaluations > 1:
            key += f"/{args.search_evaluations}-evaluations"
        if args.search_memory_limit:
            key += f"/memory-limit-{args.search_memory_limit}"
        report(key, search_peak(big, work, args.search_cache_memory, args.search_evaluations, args.search_memory_limit))
        return
    if args.only != "scale":
        equivalence(old, work, report)
    if args.only == "equivalence":
        return

    synth224 = _synthetic(work / "synthetic-2000-224px.npz", 2000, 20, 224)
    usps = SHARED / "usps.npz"
    for name, dataset in (("synthetic224", synth224), ("usps", usps)):
        _child(["_prepare", str(dataset), "224"], SRC, work / "data-new")  # the store is written once, beforehand
        for workers in (1, 2):
            for label, src in (("old", old), ("new", SRC)):
                data = work / f"data-{label}"
                report(f"memory/{name}/{label}/{workers}", _child(["_memory", str(dataset), "224", str(workers)], src, data))

    big = _synthetic(work / "synthetic-40000-64px.npz", 40000, 40, 64)
    report("search40k/old_float_copy_bytes", 40000 * 3 * 224 * 224 * 4)
    report("search40k/new", search_peak(big, work))

    subset = _usps_subset(work)
    runs = {"old": [], "new": []}
    for _ in range(3):
        for label, src in (("old", old), ("new", SRC)):
            runs[label].append(_child(["_throughput", str(subset), "224"], src, work / f"data-{label}"))
    best = {k: max(r["images_per_second"] for r in v) for k, v in runs.items()}
    report("throughput/usps2000-224px", {"runs": runs, "best": best, "new_over_old": best["new"] / best["old"]})

    for model in ("test_efficientnet", "efficientnet_lite0"):
        report(f"split/{model}", _child(["_split", str(subset), "224", model, "256"], SRC, work / "data-new"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        kind, rest = sys.argv[1], sys.argv[2:]
        if kind == "_memory":
            print(json.dumps(measure_memory(rest[0], int(rest[1]), int(rest[2]))))
        elif kind == "_prepare":
            _session(rest[0], int(rest[1]))
            print("{}")
        elif kind == "_throughput":
            print(json.dumps(measure_throughput(rest[0], int(rest[1]))))
        elif kind == "_fitness":
            print(json.dumps(measure_fitness(rest[0], int(rest[1]))))
        elif kind == "_split":
            print(json.dumps(measure_split(rest[0], int(rest[1]), rest[2], int(rest[3]))))
    else:
        main()
