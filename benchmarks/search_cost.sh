#!/usr/bin/env bash
# What a search costs in FT runs and what it buys (issue 31): `biotune search` with its default
# quick preset and final phase, arm by arm (see search_cost.py), on the four shared datasets at
# 64 px (mnist, usps, cifar10 reduced to N train / N test images as in search_quality.sh), 3 runs,
# JOBS processes at once with one thread each. Resumable: finished jobs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/search-cost}
WORK=${WORK:-${TMPDIR:-/tmp}/biotune-search-cost}
DATA=${DATA:-../shared/data}
python benchmarks/search_quality.py prepare "$DATA" "$WORK" "${N:-500}"
python benchmarks/search_cost.py run "$WORK" --runs "${RUNS:-3}" --jobs "${JOBS:-2}" ${DEADLINE:+--deadline "$DEADLINE"}
python benchmarks/search_cost.py summary "$WORK" "$OUT"
