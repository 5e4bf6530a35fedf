"""The commands about a model: ``blocks`` (its partition), ``predict`` and ``export`` (the delivered model)."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from ..config import RuntimeConfig
from ..errors import BioTuneError
from ..search import format_block_table
from ._options import parse_partition


def cmd_blocks(args) -> int:
    from ..models import build_model, partition_model

    pm = build_model(args.model, args.num_classes, weights="random")
    blocks = partition_model(pm.model, args.granularity, partition=parse_partition(args.partition))
    total = sum(b.num_params for b in blocks)
    rows = [{"index": i, "name": b.name, "num_params": b.num_params, "share": b.num_params / total,
             "prefixes": list(b.prefixes)} for i, b in enumerate(blocks)]
    if args.json:
        print(json.dumps({"model": args.model, "granularity": args.granularity, "total_params": total, "blocks": rows}, indent=2))
    else:
        print(f"{args.model}: {len(blocks)} blocks ({args.granularity}), {total:,} parameters")
        print(format_block_table(rows))
    return 0


def cmd_predict(args) -> int:
    from ..models import load_model, predict, read_inputs, write_predictions_csv

    if args.top_k < 1:
        raise BioTuneError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise BioTuneError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out).expanduser()
    if not out.parent.is_dir():
        raise BioTuneError(f"--out {out}: folder {out.parent} does not exist")
    device = RuntimeConfig(device=args.device).resolve_device()
    loaded = load_model(args.model, device=device)
    from ..config import ReadOptions

    options = ReadOptions(image_column=args.image_column, label_column=args.label_column, image_root=args.image_root)
    inputs = read_inputs(args.inputs, loaded.classes, loaded.read_size, options)  # all read and checked first
    with tqdm(total=len(inputs.images), desc="predict", unit="img", disable=args.no_progress,
              dynamic_ncols=True) as bar:
        result = predict(loaded, inputs, batch_size=args.batch_size, top_k=args.top_k, on_batch=bar.update)
    write_predictions_csv(out, result)
    print(f"{len(result.names)} images → {out}")
    if result.accuracy is not None:
        known = int((result.labels >= 0).sum())
        print(f"accuracy (top-1) on the {known} labelled images: {100 * result.accuracy:.2f}%")
    return 0


def cmd_export(args) -> int:
    from ..models import export_model, push_to_hub

    if args.format is None and args.push_to_hub is None:
        raise BioTuneError("give --format onnx|torchscript, --push-to-hub REPO, or both")
    if args.format is not None:
        check = export_model(args.model, args.format, args.out)
        print(f"{args.format} model → {check.path} (checked on {check.images} images: same top-1, largest "
              f"probability difference {check.max_probability_difference:.1e})")
    if args.push_to_hub is not None:
        url = push_to_hub(args.model, args.push_to_hub, private=args.private)
        print(f"uploaded to {url}")
    return 0
