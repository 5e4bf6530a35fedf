"""The paper's BioTune protocol on Flowers-102 at 224 px on one GPU, timed; and the naive path.

For each model (``resnet50.tv2_in1k`` with random weights: speed does not depend on them;
``efficientnet_lite0`` with its packaged ImageNet weights) it runs ``--preset paper`` on
``flowers102.npz`` (728 training images at 64 px, upsampled to 224; the official split has
1,020: times per image are also printed so they can be scaled) and prints: wall time, time
per evaluation, epochs trained, training images per second, GPU utilisation and memory
(sampled with ``nvidia-smi`` every second), and the naive reference (bf16 off, channels_last
off, prefix cache off, one run at a time) on the same first evaluations, so the speed-up
comes from one machine.

The run directories live under ``--work`` and resume, so a run cut by a time limit goes on
from where it stopped when called again (carry the folder between calls). With
``--generations`` smaller than the paper's 3 it measures what fits and extrapolates the
rest from the measured time per evaluation, and says so.

Usage::

    python benchmarks/paper_protocol_gpu.py --data ../shared/data/flowers102.npz --work .gpudata/pp \\
        --workers-per-device 3 | tee benchmarks/results/paper_protocol_gpu.txt

The last line reads ``paper-protocol-minutes: <resnet50 minutes> <device name>``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch

from biotune import PRESETS, RunConfig, RuntimeConfig, SearchListener, run
from biotune.search.evolution import batch_sizes
from biotune.training.session import RunRequest, Session

MODELS = (("resnet50.tv2_in1k", "random"), ("efficientnet_lite0", "auto"))


class GpuSampler:
    """Samples GPU utilisation (%) and memory (MiB) once a second with nvidia-smi."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=5).stdout
                util, mem = (float(x) for x in out.strip().split(",")[:2])
                self.samples.append((util, mem))
            except Exception:  # noqa: BLE001 - sampling must never stop the benchmark
                pass

    def __enter__(self) -> "GpuSampler":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def summary(self) -> str:
        if not self.samples:
            return "GPU utilisation: not sampled (no nvidia-smi)"
        util = np.array([s[0] for s in self.samples])
        mem = np.array([s[1] for s in self.samples])
        return (f"GPU utilisation: mean {util.mean():.0f}%, median {np.median(util):.0f}%, "
                f"time above 50% {100 * (util > 50).mean():.0f}%; memory peak {mem.max():.0f} MiB")


class Timings(SearchListener):
    def __init__(self) -> None:
        self.evaluations: list = []
        self.final_runs: list = []

    def on_evaluation(self, record) -> None:
        self.evaluations.append(record)

    def on_final_run(self, run_) -> None:
        self.final_runs.append(run_)


def _naive_reference(config: RunConfig, genomes, folds, seeds, device: str) -> float:
    """Seconds for the same evaluations with every optimisation off, one run at a time."""
    from biotune.search.genome import decode

    runtime = RuntimeConfig(device=device, amp=False, channels_last=False, cache_memory="0")
    session = Session.prepare(config.model, config.data, config.train, n_folds=config.search.n_folds,
                              seed=config.search.seed, runtime=runtime)
    start = time.perf_counter()
    for genome, fold, run_seeds in zip(genomes, folds, seeds):
        for seed in run_seeds:
            session.perform(RunRequest(tuple(decode(np.asarray(genome), config.train.lr).lrs), fold, seed))
    if session.finetuner.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data/flowers102.npz")
    p.add_argument("--work", default=".gpudata/paper-protocol")
    p.add_argument("--device", default="auto")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--generations", type=int, default=None, help="run fewer than the paper's 3 and extrapolate")
    p.add_argument("--workers-per-device", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--naive-evaluations", type=int, default=3, help="first evaluations re-timed on the naive path")
    p.add_argument("--models", default=",".join(m for m, _ in MODELS))
    p.add_argument("--epochs", type=int, default=None, help="override the paper's 30 (smoke tests)")
    p.add_argument("--population", type=int, default=None, help="override the paper's 10 (smoke tests)")
    p.add_argument("--seeds", type=int, default=None, help="override the paper's 3 (smoke tests)")
    args = p.parse_args()
    device_name = torch.cuda.get_device_name(0).replace(" ", "_") if torch.cuda.is_available() else "cpu"
    minutes = {}
    for name, weights in MODELS:
        if name not in args.models.split(","):
            continue
        config = RunConfig().replace(**PRESETS["paper"]).replace(
            model={"name": name, "weights": weights},
            data={"dataset": str(Path(args.data).resolve()), "image_size": args.image_size},
            search={k: v for k, v in (("generations", args.generations), ("population", args.population),
                                      ("seeds", args.seeds), ("elites", 1 if args.population else None)) if v},
            **({"train": {"epochs": args.epochs}} if args.epochs else {}),
        )
        runtime = RuntimeConfig(device=args.device, workers_per_device=args.workers_per_device, compile=args.compile)
        timings = Timings()
        run_dir = Path(args.work) / name.replace(".", "_")
        with GpuSampler() as gpu:
            start = time.perf_counter()
            result = run(config, run_dir=run_dir, runtime=runtime, listener=timings)
            wall = time.perf_counter() - start
        history = result.search.history
        trained = [r for r in history if r.source != "study"]
        s = config.search
        planned = sum(batch_sizes(s.population, s.elites, 3))  # the paper's 3 generations (at this population)
        done = sum(batch_sizes(s.population, s.elites, s.generations))
        per_eval = wall / max(1, len(trained) + len(timings.final_runs) / max(1, s.seeds))
        epochs = sum(r.evaluation.epochs for r in trained) + sum(r.epochs_run for r in timings.final_runs)
        images = sum(r.evaluation.images for r in trained) + sum(r.train_images for r in timings.final_runs)
        print(f"## {name} ({weights} weights) at {args.image_size} px on {device_name}, "
              f"{args.workers_per_device} run(s) per device")
        print(f"evaluations in this call: {len(trained)} trained, {len(history) - len(trained)} read back; "
              f"final runs {len(timings.final_runs)}")
        print(f"wall time of this call: {wall / 60:.1f} min; per evaluation {per_eval:.1f} s; "
              f"epochs trained {epochs}; training images/s {images / max(wall, 1e-9):.0f}")
        print(gpu.summary())
        total = wall if done >= planned else wall + (planned - done) * per_eval
        if done < planned:
            print(f"extrapolated to the paper's {planned} evaluations: {total / 60:.1f} min "
                  f"(measured {done}, the rest at the measured time per evaluation)")
        first = history[: args.naive_evaluations]
        if first:
            naive = _naive_reference(config, [r.candidate.array for r in first], [r.fold for r in first],
                                     [r.evaluation.seeds for r in first], args.device)
            fast = sum(r.evaluation.seconds for r in first)
            print(f"naive path on the first {len(first)} evaluations: {naive:.1f} s against {fast:.1f} s of "
                  f"training time optimised: {naive / max(fast, 1e-9):.1f}x")
        minutes[name] = total / 60
    if "resnet50.tv2_in1k" in minutes:
        print(f"paper-protocol-minutes: {minutes['resnet50.tv2_in1k']:.1f} {device_name}")


if __name__ == "__main__":
    main()
