"""Device memory and throughput of one full fine-tuning run at 224 px on a GPU, against the plan.

Writes an .npz of N random 224 px images in K classes under --work, then, per arm (model × bf16
autocast × gradient checkpointing), prepares the session as ``biotune`` does (batch 64, the quick
preset's schedule, 1 epoch), trains one FT run scored on test, and prints one JSON line: the peak
device memory allocated (``torch.cuda.max_memory_allocated``) and reserved by PyTorch's caching
allocator over the whole run, the plan's device figure (:func:`biotune.training.memory.memory_needs`)
and their ratio, and training images per second (second epoch on; the first one warms up cuDNN).

    python benchmarks/memory_gpu.py --work /tmp/memory-gpu --images 1280 --classes 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _npz(path: Path, n: int, classes: int) -> None:
    if path.is_file():
        return
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8)
    y = np.arange(n) % classes
    cut = n // 10
    np.savez(path, classes=np.array([f"class{k}" for k in range(classes)]), x_train=x[2 * cut:], y_train=y[2 * cut:], x_val=x[:cut], y_val=y[:cut], x_test=x[cut:2 * cut],
             y_test=y[cut:2 * cut])


def arm(data: str, model: str, weights: str, amp: bool, ckpt: bool, epochs: int) -> dict:
    import torch

    from biotune.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
    from biotune.training.memory import memory_needs
    from biotune.training.session import RunRequest, Session

    torch.cuda.empty_cache()
    runtime = RuntimeConfig(device="cuda", amp=amp, grad_checkpointing=ckpt, progress=False)
    session = Session.prepare(ModelConfig(model, weights=weights), DataConfig(data, image_size=224),
                              TrainConfig(epochs=epochs, patience=epochs, batch_size=64), n_folds=1, seed=0,
                              runtime=runtime)
    plan = memory_needs(session, runtime, 1).device_per_process
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    start = [time.perf_counter()]

    def on_epoch(epoch, acc, loss):
        torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - start[0])
        start[0] = now

    n = len(session.blocks)
    outcome = session.perform(RunRequest((1e-3,) * n, None, 0), on_epoch)
    peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    steady = times[1:] or times
    return {"model": model, "amp": amp, "grad_checkpointing": ckpt, "peak_allocated_gb": round(peak / 2**30, 2),
            "peak_reserved_gb": round(reserved / 2**30, 2), "plan_gb": round(plan / 2**30, 2),
            "plan_over_peak": round(plan / peak, 2),
            "train_images_per_s": round(len(session.splits.y_train) / float(np.mean(steady)), 1),
            "test_accuracy": outcome.test_accuracy, "epochs": outcome.epochs_run}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True)
    p.add_argument("--images", type=int, default=1280)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "photos224.npz"
    _npz(data, args.images, args.classes)
    for model, weights in (("efficientnet_lite0", "auto"), ("resnet50", "random")):
        for amp, ckpt in ((False, False), (True, False), (False, True), (True, True)):
            try:
                print(json.dumps(arm(str(data), model, weights, amp, ckpt, args.epochs)), flush=True)
            except Exception as err:  # one arm's failure (e.g. out of memory) must not hide the others
                print(json.dumps({"model": model, "amp": amp, "grad_checkpointing": ckpt, "error": repr(err)}), flush=True)


if __name__ == "__main__":
    main()
