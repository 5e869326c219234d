#!/usr/bin/env bash
# Issue 15's planner conditions on real episodes, in chunks of 5 that a stopped session loses at most one of: CEM from
# scratch at the CPU setting (N 200, k 20, I 4, H 12) plus the condition's own flags, on seeds FIRST .. LAST + 4 of
# 1,000,000-1,000,049 (the seeds of runs/cem_ship's unconstrained CEM, so every chunk pairs with it), one worker.
# A chunk whose results exist is skipped, so the script resumes; two calls on disjoint chunks run side by side.
#
#   bash experiments/cem_chunks.sh NAME AGENT OUT FIRST LAST [FLAG ...]
#
#   NAME   the condition: chunk K goes to OUT/NAME_K/results.json (its log to OUT/NAME_K.log)
#   AGENT  the run directory that acts (pretrained/carracing: action noise 0.2 from its config)
#   FIRST, LAST  first seeds of the first and last chunk: 1000000, 1000005, ..., 1000045
#   FLAG   test_agent.py flags of the condition (--cem.offroad-threshold 0.5; --ensemble R2 --cem.uncertainty-weight 2)
set -uo pipefail
usage="usage: bash experiments/cem_chunks.sh NAME AGENT OUT FIRST LAST [FLAG ...]"
name=${1:?$usage}
[ -d "${2:?$usage}" ] || { echo "AGENT $2: no such run directory" >&2; exit 2; }
agent=$(realpath "$2")
out=$(realpath -m "${3:?$usage}")
first=${4:?$usage}
last=${5:?$usage}
shift 5
for s in "$first" "$last"; do
  if ! [[ $s =~ ^[0-9]+$ ]] || (( s < 1000000 || s > 1000045 || (s - 1000000) % 5 )); then
    echo "FIRST and LAST must be chunks' first seeds, 1000000, 1000005, ..., 1000045 (the unconstrained runs' chunks), got $s" >&2
    exit 2
  fi
done
(( first <= last )) || { echo "FIRST ($first) must not be after LAST ($last)" >&2; exit 2; }
cd "$(dirname "$0")/.."
mkdir -p "$out"
for start in $(seq "$first" 5 "$last"); do
  dir=$out/${name}_$start
  [ -f "$dir/results.json" ] && continue
  uv run test_agent.py --run-dir "$agent" --policy cem --episodes 5 --seed "$start" --workers 1 --no-video \
    --cem.candidates 200 --cem.top-k 20 --cem.iterations 4 "$@" \
    --out "$dir/results.json" >"$dir.log" 2>&1 || { echo "chunk $start failed: see $dir.log"; exit 1; }
done
