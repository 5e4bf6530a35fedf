"""The plan's RAM per process against the measured peak, and what ``--memory-limit`` trades.

Each arm runs in a fresh process: prepares the session as ``biotune`` does (EfficientNet-Lite0 with its
packaged ImageNet weights, batch 64), prints the plan (:func:`biotune.training.memory.memory_needs`,
fitted to the arm's limit, the chosen settings applied), trains one full fine-tuning run of one epoch
(the peak of a run is its first training step and evaluation) and reports the run's measured peak
(``VmHWM``, reset before the run) and its wall time. Arms: the photo-folder shape of issue 30 (N 256 px
JPEGs, 10 classes, at 224 px) with no limit and with ``--memory-limit 4G``; the digits default (32 px).

    python benchmarks/memory_plan.py --work /tmp/memory-bench --images 600
prints ``memory-plan: <arm> plan=<GB> measured=<GB> ratio=<plan/measured> seconds=<s> settings=<...>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from data_scale import tree_peak_until  # noqa: E402
from memory import _generate  # noqa: E402  (the same photo folder as memory.py)


def _child(dataset: str, size: int, data: str, limit: str, threads: int) -> None:
    from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
    from biotune.training.memory import apply_fit, memory_needs
    from biotune.training.session import FINAL_SEEDS, RunRequest, Session, training_seeds

    runtime = RuntimeConfig(threads=threads, data_dir=data, memory_limit=limit or None)
    session = Session.prepare(ModelConfig("efficientnet_lite0"), DataConfig(dataset, image_size=size),
                              TrainConfig(epochs=1, patience=1, batch_size=64), n_folds=1, seed=0, runtime=runtime)
    # FT freezes no prefix, so it never fills the prefix cache: the plan of this job counts none
    needs = memory_needs(session, runtime, 1, limit=runtime.memory_limit_bytes, cache_bytes=0)
    refused = needs.problem()
    if refused and needs.batch_that_fits:  # what the refusal proposes, measured
        print(json.dumps({"refused": refused}), flush=True)
        session = Session.prepare(ModelConfig("efficientnet_lite0"), DataConfig(dataset, image_size=size),
                                  TrainConfig(epochs=1, patience=1, batch_size=needs.batch_that_fits), n_folds=1, seed=0,
                                  runtime=runtime)
        needs = memory_needs(session, runtime, 1, limit=runtime.memory_limit_bytes, cache_bytes=0)
    fitted = apply_fit(runtime, needs.fit)
    if fitted is not runtime:
        session.reconfigure(fitted)
    outcome = session.perform(RunRequest((1e-3,) * len(session.blocks), None, training_seeds(0, FINAL_SEEDS, 1)[0]))
    tuner = session.finetuner
    print(json.dumps({"plan": needs.ram_per_process, "measured": outcome.ram_peak, "seconds": outcome.seconds,
                      "batch": tuner.batch_size, "refused": refused,
                      "eval_batch": tuner.eval_batch_size, "grad_checkpointing": tuner.options.grad_checkpointing,
                      "cache": tuner.options.cache_memory, "changes": list(needs.fit.changes) if needs.fit else None,
                      "val_accuracy": outcome.best_val_accuracy}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/biotune-memory-bench")
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--search", type=int, default=0, metavar="N",
                   help="also run the default `biotune search` on the photo folder (no limit, then --memory-limit 4G) "
                        "until N evaluations are stored (6: the quick preset's first generation), peak of its process tree")
    p.add_argument("--only-search", action="store_true", help="skip the fine-tuning arms")
    p.add_argument("--search-limits", default=",4G", help="the searches' --memory-limit values, comma-separated "
                                                           "('' for none; default: none, then 4G)")
    p.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        dataset, size, data, limit, threads = args.child
        _child(dataset, int(size), data, limit, int(threads))
        return
    work = Path(args.work)
    folder = work / f"photos-{args.images}"
    _generate(folder, args.images, 10)
    arms = (("photos-224px", str(folder), 224, ""), ("photos-224px-limit-4G", str(folder), 224, "4G"),
            ("digits-32px", "digits", 32, ""))
    results = json.loads(Path(args.out).read_text()) if args.out and Path(args.out).is_file() else {}
    for name, dataset, size, limit in () if args.only_search else arms:
        out = subprocess.run([sys.executable, __file__, "--child", dataset, str(size), str(work / "data"), limit,
                              str(args.threads)], capture_output=True, text=True)
        if out.returncode:
            print(f"memory-plan: {name} failed: {out.stderr.strip().splitlines()[-1]}", flush=True)
            continue
        r = results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        if r["refused"]:
            print(f"memory-plan: {name} refused at batch 64: {r['refused']}", flush=True)
        print(f"memory-plan: {name} batch={r['batch']} plan={r['plan'] / 2**30:.2f} measured={r['measured'] / 2**30:.2f} "
              f"ratio={r['plan'] / r['measured']:.2f} seconds={r['seconds']:.0f} settings=eval batch {r['eval_batch']}, "
              f"checkpointing {r['grad_checkpointing']}, cache {r['cache'] / 2**20:.0f} MB"
              + (f" ({'; '.join(r['changes'])})" if r["changes"] else ""), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    for limit in args.search_limits.split(",") if args.search else ():
        name = f"search-photos{args.images}-224px{'-limit-' + limit if limit else ''}"
        run_dir = work / name
        cmd = [sys.executable, "-m", "biotune", "search", "--dataset", str(folder), "--image-size", "224",
               "--threads", str(args.threads), "--run-dir", str(run_dir), "--no-progress", "--data-dir", str(work / "data")]
        r = tree_peak_until(cmd + (["--memory-limit", limit] if limit else []), dict(os.environ), run_dir, args.search)
        plan = re.search(r"([0-9.]+) GB RAM\S* per process x (\d+)", " ".join(r["plan"]))
        r["plan_bytes"] = float(plan.group(1)) * 2**30 * int(plan.group(2)) if plan else None  # format_bytes: GiB
        results[name] = r
        ratio = r["plan_bytes"] / r["peak_tree_rss"] if r["plan_bytes"] else float("nan")
        print(f"memory-plan: {name} evaluations={r['evaluations']} plan={(r['plan_bytes'] or 0) / 2**30:.2f} "
              f"measured={r['peak_tree_rss'] / 2**30:.2f} ratio={ratio:.2f} seconds={r['seconds']:.0f} "
              f"({' | '.join(r['plan'])})", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
