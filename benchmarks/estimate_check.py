"""Is the time estimate printed before a search right? Estimate, then run the same search, print both.

Usage::

    python benchmarks/estimate_check.py [--preset quick] [--threads N] > benchmarks/results/estimate_check.txt

It runs ``biotune.plan`` (what ``biotune search --dry-run`` prints) and then ``biotune.run``
with the same settings on the offline demo (digits, EfficientNet-Lite0 with its packaged
weights) in a temporary run directory, and prints the estimated range, the measured wall
time and where the measurement falls (``within a factor of 3`` is the target).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from biotune import PRESETS, RunConfig, RuntimeConfig
from biotune.pipeline import plan, run
from biotune.training.estimate import format_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    config = RunConfig().replace(**PRESETS[args.preset])
    runtime = RuntimeConfig(threads=args.threads)
    start = time.perf_counter()
    estimate = plan(config, runtime=runtime).estimate
    planning = time.perf_counter() - start
    print("\n".join(estimate.lines()))
    print(f"planning took {planning:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run(config, run_dir=f"{tmp}/run", runtime=runtime)
        measured = time.perf_counter() - start
    ratio_low, ratio_high = measured / estimate.low, measured / estimate.high
    within = estimate.low / 3 <= measured <= estimate.high * 3
    print(f"measured wall time: {format_seconds(measured)} ({measured:.0f} s)")
    print(f"measured / estimate: {ratio_low:.2f} of the low end, {ratio_high:.2f} of the high end")
    print(f"estimate-within-factor-3: {'yes' if within else 'no'}")


if __name__ == "__main__":
    main()
