#!/usr/bin/env bash
# The comparison at the paper's resolution (224 px) on one GPU, for Flowers-102: a cross-check
# of benchmarks/reproduce.sh, whose stored sizes (16-64 px) are far below what ImageNet
# features expect. See README.md, "reproduce_gpu.sh".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/reproduction-224px}
DATA=${DATA:-../shared/data}
${PYTHON:-python} -m biotune compare --datasets flowers102 --data-dir "$DATA" --image-size 224 --device cuda \
  --methods ft,lp,l1sp,l2sp,glf,gfl,autorgn,lora,biotune,random,tpe --runs 3 \
  --epochs 10 --patience 3 --batch-size 64 \
  --population 6 --elites 2 --generations 3 --seeds 1 --fraction 0.2 --no-progress --out "$OUT"
