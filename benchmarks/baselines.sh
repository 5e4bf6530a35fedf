#!/usr/bin/env bash
# Every baseline at its authors' defaults and tuned on validation (compare --tune-baselines), against
# FT at the 12-epoch budget and at the paper's (30 epochs), and BioTune's search: the four shared
# datasets at 64 px (mnist, usps, cifar10 reduced to N train / N test images as in search_quality.sh),
# 12 epochs, patience 3, RUNS runs. See README.md, "baselines.sh".
#
# The grid is split into jobs (arm × dataset × method) run JOBS at a time; each job grows its runs one
# at a time (--runs 1, 2, ...: compare skips finished cells), so a job cut by DEADLINE (seconds from
# the start; 0 = none) still leaves whole runs. Resumable: rerun with the same WORK. The arms' ledgers
# are then merged into OUT/<arm>.jsonl and summarised by baselines.py. ONLY (a regex over the job lines,
# "<arm> <dataset> <methods> [options]") runs a part, e.g. ONLY="^tuned .* (autorgn|lora) ".
#   on 2 CPU cores: JOBS=2 EXTRA="--threads 1" (hours);  on one GPU: JOBS=16 EXTRA="--threads 1"
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/baselines}
WORK=${WORK:-${TMPDIR:-/tmp}/biotune-baselines}
DATA=${DATA:-../shared/data}
N=${N:-500}
RUNS=${RUNS:-3}
JOBS=${JOBS:-2}
DEADLINE=${DEADLINE:-0}
DATASETS=(${DATASETS:-flowers102 cifar10 usps mnist})
BASELINES=(${BASELINES:-ft lp l1sp l2sp glf gfl autorgn lora})
COMMON="--data-dir $WORK/data --image-size 64 --epochs ${EPOCHS:-12} --patience 3 --batch-size 64
        --population 4 --elites 1 --generations 2 --seeds 1 --fraction 0.25 --top-k 2 --no-progress ${EXTRA:-}"
export WORK RUNS COMMON
START=$(date +%s)
export END=$(( DEADLINE > 0 ? START + DEADLINE : 0 ))

python benchmarks/search_quality.py prepare "$DATA" "$WORK/data" "$N"
mkdir -p "$OUT" "$WORK/logs"

job() {  # arm dataset methods [extra compare options...]
  local arm=$1 dataset=$2 methods=$3; shift 3
  local dir="$WORK/$arm/$dataset-${methods//,/-}"
  mkdir -p "$dir"
  for r in $(seq 1 "$RUNS"); do
    local left=86400
    if [ "$END" -gt 0 ]; then left=$(( END - $(date +%s) )); [ "$left" -gt 5 ] || return 0; fi
    timeout "$left" biotune compare $COMMON --datasets "$dataset" --methods "$methods" --runs "$r" --out "$dir" "$@" \
      >> "$WORK/logs/$arm-$dataset-${methods//,/-}.log" 2>&1 || return 0
  done
}
export -f job

{  # the defaults and FT at 30 epochs first, then the tuned cells, BioTune's search last
  for d in "${DATASETS[@]}"; do echo "defaults $d $(IFS=,; echo "${BASELINES[*]}")"; done
  for d in "${DATASETS[@]}"; do echo "ft30 $d ft --epochs 30"; done
  for m in "${BASELINES[@]}"; do for d in "${DATASETS[@]}"; do echo "tuned $d $m --tune-baselines"; done; done
  for d in "${DATASETS[@]}"; do echo "tuned $d biotune"; done
} | grep -E "${ONLY:-.}" | xargs -P "$JOBS" -L 1 bash -c 'job "$@"' _

for arm in defaults ft30 tuned; do
  cat "$WORK/$arm"/*/runs.jsonl > "$OUT/$arm.jsonl" 2>/dev/null || true
done
python benchmarks/baselines.py summary "$OUT" | tee "$OUT/summary.txt"
echo "baselines.sh: $(( $(date +%s) - START )) s"
