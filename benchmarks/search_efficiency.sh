#!/usr/bin/env bash
# Search efficiency: today's default search against the one before pruning and the warm start,
# and against FT with a tuned learning rate, at 8 epochs per run, on the four shared datasets at
# 64 px, 3 runs each (issue 22). Sized for 2 CPU cores: about an hour with two shards.
#
#   old:  TPE, --no-warm-start --pruner none (the default before)
#   new:  TPE with the warm start and successive-halving pruning (NEW="--pruner median" for the default)
#   ftlr: FT whose base learning rate is tuned with as many runs as the search makes (full runs)
#   ft:   FT at the base learning rate
#
# The datasets are search_quality.sh's (mnist, usps, cifar10 reduced to N train / N test images,
# flowers102 whole). Each arm is its own compare grid (resumable: finished cells are skipped),
# grown one run at a time so that a cut-off benchmark leaves every arm with as many runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/search-efficiency}
WORK=${WORK:-${TMPDIR:-/tmp}/biotune-search-efficiency}
DATA=${DATA:-../shared/data}
N=${N:-500}
RUNS=${RUNS:-3}
NEW=${NEW:---pruner successive-halving}  # the new arm's pruner; another one with its own OUT and WORK
SHARDS=(${SHARDS:-flowers102,usps cifar10,mnist})
COMMON=(biotune compare --data-dir "$WORK" --image-size 64 --epochs 8 --patience 3 --batch-size 64
        --population 4 --elites 1 --generations 2 --seeds 1 --fraction 0.25 --top-k 2 --no-progress)

python benchmarks/search_quality.py prepare "$DATA" "$WORK" "$N"
mkdir -p "$OUT"
shard() {  # datasets of one shard, comma-separated
  local name=${1//,/-}
  for r in $(seq 1 "$RUNS"); do
    "${COMMON[@]}" --threads 1 --runs "$r" --datasets "$1" --methods tpe --no-warm-start --pruner none \
      --out "$WORK/old/$name" >> "$WORK/$name.log" 2>&1
    "${COMMON[@]}" --threads 1 --runs "$r" --datasets "$1" --methods tpe,ftlr,ft $NEW \
      --out "$WORK/new/$name" >> "$WORK/$name.log" 2>&1
  done
}
pids=()
for s in "${SHARDS[@]}"; do shard "$s" & pids+=($!); done
wait "${pids[@]}"

for arm in old new; do
  : > "$OUT/runs-$arm.jsonl"
  for s in "${SHARDS[@]}"; do cat "$WORK/$arm/${s//,/-}/runs.jsonl" >> "$OUT/runs-$arm.jsonl"; done
done
python benchmarks/search_efficiency.py "$OUT" | tee "$OUT/summary.txt"
