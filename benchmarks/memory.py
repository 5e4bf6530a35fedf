"""Peak memory of one full fine-tuning run at 224 px: the evaluation batch fixed at 512 (before) against
sized from the training batch (after), and with timm's gradient checkpointing, on the photo-folder
shape of issue 30.

Generates a folder of N photo-like 256 px JPEGs in K classes once under --work (val/ and test/
splits of 10 % each), then, per arm, in a fresh process: prepares the session (EfficientNet-Lite0 with
its packaged ImageNet weights, the quick preset's 4 epochs, patience 2, batch 64, at 224 px) and
trains one FT run with the final phase's seed, scored on test (what ``biotune compare --methods ft
--runs 1`` does). Each process reports its peak RSS (``ru_maxrss``), its baseline after the session
is prepared, wall time, and validation and test accuracy; the arms must agree on accuracy.

    python benchmarks/memory.py --work /tmp/memory-bench --images 1200 --classes 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _generate(root: Path, n: int, classes: int) -> None:
    from PIL import Image

    done = root / ".complete"
    if done.is_file() and done.read_text() == f"{n},{classes}":
        return
    rng = np.random.default_rng(0)
    for i in range(n):
        split = "test" if i % 10 == 0 else "val" if i % 10 == 1 else "train"
        label = (i // 10) % classes  # the split comes from i % 10, the class from the rest
        small = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        path = root / split / f"class{label}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(small).resize((256, 256), Image.BICUBIC).save(path, quality=90)
    done.write_text(f"{n},{classes}")


def _child(folder: str, data: str, eval_batch: int, threads: int, checkpointing: bool) -> None:
    from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
    from biotune.training.session import FINAL_SEEDS, RunRequest, Session, training_seeds

    runtime = RuntimeConfig(threads=threads, data_dir=data, grad_checkpointing=checkpointing)
    session = Session.prepare(ModelConfig("efficientnet_lite0"), DataConfig(folder, image_size=224),
                              TrainConfig(epochs=4, patience=2, batch_size=64), n_folds=1, seed=0, runtime=runtime)
    if eval_batch:
        session.finetuner.eval_batch_size = eval_batch
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    n = len(session.blocks)
    outcome = session.perform(RunRequest((1e-3,) * n, None, training_seeds(0, FINAL_SEEDS, 1)[0]))
    print(json.dumps({"eval_batch": session.finetuner.eval_batch_size, "seconds": time.perf_counter() - start,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "prepared_mb": baseline, "val_accuracy": outcome.best_val_accuracy,
                      "test_accuracy": outcome.test_accuracy, "epochs": outcome.epochs_run}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/biotune-memory-bench")
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        folder, data, eval_batch, threads, checkpointing = args.child
        _child(folder, data, int(eval_batch), int(threads), checkpointing == "1")
        return
    work = Path(args.work)
    folder = work / "photos"
    _generate(folder, args.images, args.classes)
    results = {}
    arms = (("before (eval batch 512)", 512, 0), ("after (eval batch sized from the training batch)", 0, 0),
            ("after, with --grad-checkpointing", 0, 1))
    for arm, eval_batch, checkpointing in arms:
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(work / "data"), str(eval_batch),
                              str(args.threads), str(checkpointing)], check=True, capture_output=True, text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        results[arm] = res
        print(f"memory: FT at 224 px, {arm}: eval batch {res['eval_batch']}, peak RSS {res['peak_mb'] / 1024:.2f} GB "
              f"({res['prepared_mb'] / 1024:.2f} GB once prepared), {res['seconds']:.0f} s for {res['epochs']} epochs, "
              f"val {res['val_accuracy']:.4f}, test {res['test_accuracy']:.4f}", flush=True)
    before = results[arms[0][0]]
    for arm, _, _ in arms[1:]:
        after = results[arm]
        print(f"memory: {arm}: peak {before['peak_mb'] / 1024:.2f} -> {after['peak_mb'] / 1024:.2f} GB "
              f"({after['peak_mb'] / before['peak_mb']:.2f}x), time {after['seconds'] / before['seconds']:.2f}x, "
              f"val {after['val_accuracy']:.4f} vs {before['val_accuracy']:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
