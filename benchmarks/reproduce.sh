#!/usr/bin/env bash
# Reduced-scale reproduction of the paper's comparison (Tables I-II, Fig. 2) on the four datasets
# of ../shared/data, sized for about 1¼ hours of 2 CPU cores. See README.md, "reproduce.sh".
#
# The grid is the single command in COMPARE below. To use both cores, each dataset runs as its own
# shard (one thread each, two at a time); their ledgers are then merged and the same command,
# run over every dataset, finds all runs finished and writes the combined tables and figures.
# A shard without a ledger in WORK starts from the committed one in OUT, so adding a method to
# --methods runs only that method's cells.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/reproduction}
WORK=${WORK:-${TMPDIR:-/tmp}/biotune-reproduction}
DATA=${DATA:-../shared/data}
DATASETS=(mnist cifar10 usps flowers102)  # longest first: the two slots finish close together
TABLE=mnist,usps,cifar10,flowers102       # column order of the tables
COMPARE=(biotune compare --data-dir "$DATA" --image-size native --runs 3
         --methods ft,lp,l1sp,l2sp,glf,gfl,autorgn,lora,ftlr,lpft,llrd,biotune,random,tpe
         --epochs 4 --patience 2 --batch-size 64
         --population 4 --elites 1 --generations 2 --seeds 1 --fraction 0.2 --no-progress)

mkdir -p "$WORK" "$OUT"
export WORK
for d in "${DATASETS[@]}"; do  # resume from the committed ledger: finished cells are not rerun
  if [ ! -s "$WORK/$d/runs.jsonl" ] && [ -s "$OUT/runs.jsonl" ]; then
    mkdir -p "$WORK/$d"
    python -c 'import json, sys
for line in open(sys.argv[1]):
    if json.loads(line)["dataset"] == sys.argv[2]: sys.stdout.write(line)' "$OUT/runs.jsonl" "$d" > "$WORK/$d/runs.jsonl"
  fi
done
printf '%s\n' "${DATASETS[@]}" | xargs -P 2 -I{} sh -c \
  "$(printf '%q ' "${COMPARE[@]}") --threads 1 --datasets {} --out \"\$WORK/{}\" > \"\$WORK/{}.log\" 2>&1"

: > "$OUT/runs.jsonl"
for d in "${DATASETS[@]}"; do
  cat "$WORK/$d/runs.jsonl" >> "$OUT/runs.jsonl"
  cp "$WORK/$d"/convergence-*.png "$OUT/" 2>/dev/null || true  # none when only baselines ran
done
"${COMPARE[@]}" --datasets "$TABLE" --out "$OUT"
