#!/usr/bin/env bash
# The paper's protocol on Flowers-102 at 224 px on one GPU (see paper_protocol_gpu.py). Resumes
# from $WORK, so a call cut by a time limit goes on when run again with the same folder.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-.gpudata/paper-protocol}
mkdir -p benchmarks/results "$WORK"
python benchmarks/paper_protocol_gpu.py --data "${DATA:-../shared/data/flowers102.npz}" --work "$WORK" \
  --workers-per-device "${WPD:-3}" "$@" | tee benchmarks/results/paper_protocol_gpu.txt
