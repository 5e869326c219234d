#!/usr/bin/env bash
# Issue 15's off-road constraint on 50 real episodes, in chunks of 5 that a stopped session loses at most one of:
# CEM from scratch (CPU setting: N 200, k 20, I 4, H 12) with --cem.offroad-threshold 0.5, the shipped agent
# (pretrained/carracing, action noise 0.2 from its config), seeds 1,000,000-1,000,049: the seeds of
# runs/cem_ship/cem_a and cem_b, the same planner without the constraint (README, "Planning in the dream").
# A chunk whose results exist is skipped, so the script resumes; FIRST (default 1000000) starts at a later chunk on a
# machine that lacks the earlier chunks' results. Usage: bash experiments/cem_offroad_chunks.sh [AGENT] [OUT] [FIRST]
set -uo pipefail
cd "$(dirname "$0")/.."
agent=${1:-pretrained/carracing}
out=${2:-runs/cem_ship}
first=${3:-1000000}
if ! [[ $first =~ ^[0-9]+$ ]] || (( first < 1000000 || first > 1000045 || (first - 1000000) % 5 )); then
  echo "FIRST must be a chunk's first seed, 1000000, 1000005, ..., 1000045 (the unconstrained runs' chunks), got $first" >&2
  exit 2
fi
mkdir -p "$out"
for start in $(seq "$first" 5 1000045); do
  dir=$out/offroad_$start
  [ -f "$dir/results.json" ] && continue
  uv run test_agent.py --run-dir "$agent" --policy cem --episodes 5 --seed "$start" --workers 1 --no-video \
    --cem.candidates 200 --cem.top-k 20 --cem.iterations 4 --cem.offroad-threshold 0.5 \
    --out "$dir/results.json" >"$dir.log" 2>&1 || { echo "chunk $start failed: see $dir.log"; exit 1; }
done
