#!/usr/bin/env bash
# Search quality at equal compute: BioTune's default search (robust memetic), the paper's memetic
# operators, random search and TPE over the same genome space (same prior, folds, seeds, budget,
# top-k selection on validation), and FT, on the four shared datasets at 64 px, 3 runs each.
# Sized for 2 CPU cores: see README.md, "search_quality.sh".
#
# mnist, usps and cifar10 are reduced to N training and N test images (stratified); flowers102 is
# used whole. Each dataset pair is a shard (one thread each, two at a time); within a shard the
# grid grows one run at a time (--runs 1, 2, 3: compare skips finished cells), so a cut-off run
# still leaves every method with the same number of runs. The shards' ledgers are merged and
# the same command over all datasets writes the combined tables.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/search-quality}
WORK=${WORK:-${TMPDIR:-/tmp}/biotune-search-quality}
DATA=${DATA:-../shared/data}
N=${N:-500}
RUNS=${RUNS:-3}
SHARDS=(${SHARDS:-flowers102,usps cifar10,mnist})  # one process each, all at once
COMPARE=(biotune compare --data-dir "$WORK" --image-size 64 --methods ${METHODS:-ft,memetic,random,robust,tpe}
         --epochs 4 --patience 2 --batch-size 64
         --population 4 --elites 1 --generations 2 --seeds 1 --fraction 0.25 --top-k 2 --no-progress
         ${EXTRA:-})  # e.g. EXTRA=--train-head, with its own OUT and WORK

python benchmarks/search_quality.py prepare "$DATA" "$WORK" "$N"
mkdir -p "$OUT"
shard() {  # datasets of one shard, comma-separated
  local name=${1//,/-}
  for r in $(seq 1 "$RUNS"); do
    "${COMPARE[@]}" --threads 1 --runs "$r" --datasets "$1" --out "$WORK/$name" >> "$WORK/$name.log" 2>&1
  done
}
pids=()
for s in "${SHARDS[@]}"; do shard "$s" & pids+=($!); done
wait "${pids[@]}"

: > "$OUT/runs.jsonl"
for s in "${SHARDS[@]}"; do
  cat "$WORK/${s//,/-}/runs.jsonl" >> "$OUT/runs.jsonl"
  cp "$WORK/${s//,/-}"/convergence-*.png "$OUT/" 2>/dev/null || true
done
ALL=$(IFS=,; echo "${SHARDS[*]}")
TABLE=$(for d in mnist usps cifar10 flowers102; do if [[ ",$ALL," == *",$d,"* ]]; then echo "$d"; fi; done | paste -sd,)
"${COMPARE[@]}" --runs "$RUNS" --datasets "$TABLE" --out "$OUT"
python benchmarks/search_quality.py summary "$OUT" | tee "$OUT/summary.txt"
