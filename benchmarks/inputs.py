"""Ingest of a label table against an ImageFolder of the same files: images per second and peak RSS.

Generates N photo-sized JPEGs (500×375 px, smooth content so that they compress like photos, 10
classes) once under --work, laid out as an ImageFolder (``folder/<class>/<i>.jpg``) and described by a
table (``table.csv``: ``image,label``, the same files). Each ingest (the store at 224 px, written from
scratch) runs in its own process, alternating table and folder; a process reports its wall time and its
peak resident memory above its own baseline (after imports, before reading). ``--listing-rows`` also
times and measures listing a table of that many rows (hard links to the same files, so the disk holds
one copy), which is what grows with the row count; decoding holds a fixed window of images whatever it.

    python benchmarks/inputs.py --work /tmp/inputs-bench --images 10000 --repeats 2 --listing-rows 100000 \
        --ingest-rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _generate(work: Path, n: int) -> None:
    from PIL import Image

    done = work / "folder" / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return
    shutil.rmtree(work / "folder", ignore_errors=True)
    rng = np.random.default_rng(0)
    rows = ["image,label"]
    for i in range(n):
        label = i % 10
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)  # upsampled: photo-like, not noise
        img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        path = work / "folder" / f"class{label}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=85)
        rows.append(f"folder/class{label}/{i:06d}.jpg,class{label}")
    (work / "table.csv").write_text("\n".join(rows) + "\n")
    done.write_text(str(n))


def _links(work: Path, rows: int, n: int) -> Path:
    """A table of ``rows`` rows over hard links to the ``n`` generated files."""
    table = work / f"table-{rows}.csv"
    if table.is_file():
        return table
    lines = ["image,label"]
    for r in range(rows):
        i = r % n
        src = work / "folder" / f"class{i % 10}" / f"{i:06d}.jpg"
        dst = work / "links" / f"{r // 10000:03d}" / f"{r:07d}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(src, dst)
        lines.append(f"{dst.relative_to(work)},class{i % 10}")
    table.write_text("\n".join(lines) + "\n")
    return table


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _child(kind: str, source: str, store: str, size: int) -> None:
    """One ingest in this process: prints JSON with seconds, images, baseline and peak RSS (MB)."""
    import torch  # noqa: F401  (imported before the baseline, as in a run)

    from biotune.data.dataset import load_dataset
    from biotune.data.sources import list_source
    from biotune.data.listing import ReadOptions

    baseline = _rss_mb()
    start = time.perf_counter()
    if kind == "listing":
        listing = list_source(source, ReadOptions())
        images = sum(len(s) for s in listing.splits.values())
    else:
        ds = load_dataset(source, image_size=size, store_dir=store)
        images = len(ds.y_train) + len(ds.y_test) + (0 if ds.y_val is None else len(ds.y_val))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "seconds": seconds, "images": images, "baseline_mb": baseline, "peak_mb": peak,
                      "above_baseline_mb": peak - baseline}))


def _run(kind: str, source: Path, store: Path, size: int) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(source), str(store), str(size)],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["images_per_second"] = result["images"] / result["seconds"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/biotune-inputs-bench", help="where the JPEGs and stores go")
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--listing-rows", type=int, default=100000)
    p.add_argument("--ingest-rows", type=int, default=0,
                   help="also ingest the --listing-rows table whole (its store: rows x size^2 x 3 bytes on disk)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, source, store, size = args.child
        _child(kind, source, store, int(size))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    _generate(work, args.images)
    print(f"inputs: {args.images} JPEGs of 500x375 px ready in {time.perf_counter() - t:.0f} s ({work})")
    results = {"table": [], "folder": []}
    for r in range(args.repeats):
        for kind, source in (("table", work / "table.csv"), ("folder", work / "folder")):
            res = _run(kind, source, work / "store", args.size)
            results[kind].append(res)
            print(f"inputs: {kind:6s} run {r}: {res['images']} images in {res['seconds']:.1f} s = "
                  f"{res['images_per_second']:.1f} img/s; peak RSS {res['peak_mb']:.0f} MB "
                  f"({res['above_baseline_mb']:.0f} MB above the baseline {res['baseline_mb']:.0f} MB)", flush=True)
    best = {k: max(r["images_per_second"] for r in v) for k, v in results.items()}
    peak = max(r["above_baseline_mb"] for v in results.values() for r in v)
    summary = {"images": args.images, "size": args.size, "table_img_s": best["table"], "folder_img_s": best["folder"],
               "ratio": best["table"] / best["folder"], "peak_above_baseline_mb": peak, "runs": results}
    print(f"inputs: table {best['table']:.1f} img/s vs folder {best['folder']:.1f} img/s = "
          f"{summary['ratio']:.2f}x (target >= 0.9x); peak RSS above baseline {peak:.0f} MB (target <= 1024 MB)")
    if args.listing_rows:
        for rows in sorted({args.images, args.listing_rows}):
            table = _links(work, rows, args.images) if rows != args.images else work / "table.csv"
            res = _run("listing", table, work / "store", args.size)
            summary[f"listing_{rows}"] = res
            print(f"inputs: listing a {rows}-row table: {res['seconds']:.1f} s, "
                  f"{res['above_baseline_mb']:.0f} MB above the baseline")
    if args.ingest_rows:
        res = _run("table", _links(work, args.ingest_rows, args.images), work / "store", args.size)
        summary[f"ingest_{args.ingest_rows}"] = res
        print(f"inputs: ingest of a {args.ingest_rows}-row table: {res['seconds']:.0f} s = "
              f"{res['images_per_second']:.1f} img/s, {res['above_baseline_mb']:.0f} MB above the baseline")
    shutil.rmtree(work / "store", ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
