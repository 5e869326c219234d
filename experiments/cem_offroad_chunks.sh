#!/usr/bin/env bash
# Issue 15's off-road constraint on 50 real episodes (README, "Planning in the dream"): CEM from scratch with
# --cem.offroad-threshold 0.5 on the shipped agent, seeds 1,000,000-1,000,049 in chunks of 5 (experiments/cem_chunks.sh,
# condition `offroad`). FIRST (default 1000000) starts at a later chunk on a machine that lacks the earlier chunks'
# results. Usage: bash experiments/cem_offroad_chunks.sh [AGENT] [OUT] [FIRST]
set -uo pipefail
exec bash "$(dirname "$0")/cem_chunks.sh" offroad "${1:-pretrained/carracing}" "${2:-runs/cem_ship}" "${3:-1000000}" 1000045 \
  --cem.offroad-threshold 0.5
