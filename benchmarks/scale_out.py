"""The offline default search on 1, 2 and 3 parallel workers — the processes executor and a Ray
cluster of that many one-CPU nodes on 127.0.0.1 — wall time against the printed estimate.

Target (issue 24): the actual time within the estimate's range, or at worst within 0.67–1.5×
its midpoint, at every width. Every run uses ``--threads 1`` per training run, as a cluster
user would; the estimate measures the training speed at that thread count and counts the rounds
of each generation on the workers that really run at once.

    python benchmarks/scale_out.py [--out benchmarks/results/scale_out.jsonl] [--widths 1,2,3]

Resumable: a (executor, width) already in ``--out`` is skipped. Prints one line per cell and a table.
``--replan`` recomputes the estimate of every recorded cell with the current code (the plan only:
the same resolved settings, cluster and measurement) and keeps its measured wall time: the
search's work does not depend on how it is estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import biotune
from biotune import RunConfig, RuntimeConfig
from biotune.config import PRESETS


def _cluster(width: int):
    """A Ray cluster of ``width`` one-CPU nodes on loopback (Ray resolves this machine to 127.0.0.1)."""
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    local = {"node_ip_address": "127.0.0.1", "include_dashboard": False, "num_cpus": 1}
    cluster = Cluster(initialize_head=True, head_node_args=local)
    for _ in range(width - 1):
        cluster.add_node(**local)
    cluster.wait_for_nodes()
    return cluster


def _cell(executor: str, width: int, record: dict | None = None) -> dict:
    """Plan and run one cell; with ``record``, plan only and keep its measured run."""
    config = RunConfig().replace(**PRESETS["quick"])  # the offline default: digits, Lite0, quick
    cluster = _cluster(width) if executor == "ray" else None
    try:
        runtime = RuntimeConfig(threads=1, executor=executor,
                                **({"workers": width} if executor == "processes" else
                                   {"ray_address": cluster.address}))
        estimate = biotune.pipeline.plan(config, runtime=runtime).estimate
        if record is None:
            run_dir = Path(tempfile.mkdtemp(prefix=f"scale-{executor}{width}-")) / "run"
            start = time.perf_counter()
            result = biotune.run(config, run_dir=run_dir, runtime=runtime)
            record = {"wall_s": round(time.perf_counter() - start, 1),
                      "test_accuracy": result.best["test_accuracy_mean"], "fitness": result.best["fitness"]}
            shutil.rmtree(run_dir.parent, ignore_errors=True)
    finally:
        if cluster is not None:
            cluster.shutdown()
    wall = record["wall_s"]
    mid = (estimate.low + estimate.high) / 2
    return {
        "executor": executor, "width": width, "runs_at_once": estimate.workers,
        "search_rounds": estimate.search_rounds, "final_rounds": estimate.final_rounds,
        "ms_per_image_full_ft": round(1e3 * estimate.speed.train, 3),
        "ms_per_image_search_prior": round(1e3 * estimate.speed.run_train, 3),
        "estimate_low_s": round(estimate.low, 1), "estimate_high_s": round(estimate.high, 1),
        "wall_s": wall, "wall_over_mid": round(wall / mid, 3),
        "within_range": estimate.low <= wall <= estimate.high, "within_0.67_1.5": 0.67 <= wall / mid <= 1.5,
        "test_accuracy": record["test_accuracy"], "fitness": record["fitness"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/scale_out.jsonl")
    parser.add_argument("--widths", default="1,2,3")
    parser.add_argument("--executors", default="processes,ray")
    parser.add_argument("--replan", action="store_true", help="re-estimate the recorded cells, keep their runs")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if args.replan:
        done = [_cell(r["executor"], r["width"], r) for r in done]
        out.write_text("".join(json.dumps(r) + "\n" for r in done))
    have = {(r["executor"], r["width"]) for r in done}
    for executor in args.executors.split(","):
        for width in (int(w) for w in args.widths.split(",")):
            if (executor, width) in have:
                continue
            record = _cell(executor, width)
            with out.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            done.append(record)
            print(f"scale-out: {executor} x{width}: estimate {record['estimate_low_s']:.0f}–"
                  f"{record['estimate_high_s']:.0f} s, actual {record['wall_s']:.0f} s "
                  f"({record['wall_over_mid']:.2f}x the midpoint)", flush=True)
    print("\n| executor | workers | runs at once | rounds (search + final) | estimate (s) | actual (s) | actual / midpoint |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(done, key=lambda r: (r["executor"], r["width"])):
        print(f"| {r['executor']} | {r['width']} | {r['runs_at_once']} | {r['search_rounds']} + {r['final_rounds']} | "
              f"{r['estimate_low_s']:.0f}–{r['estimate_high_s']:.0f} | {r['wall_s']:.0f} | {r['wall_over_mid']:.2f} |")
    for r in sorted(done, key=lambda r: (r["executor"], r["width"])):
        print(f"scale-out: {r['executor']} x{r['width']}: estimate {r['estimate_low_s']:.0f}–{r['estimate_high_s']:.0f} s,"
              f" actual {r['wall_s']:.0f} s ({r['wall_over_mid']:.2f}x the midpoint)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
