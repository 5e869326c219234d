#!/usr/bin/env bash
# Issue 16: the `lunar_padded` recipe with a third dataset of climbs (random flights under sustained main-engine
# thrust), so M has seen what full thrust does before CMA-ES exploits it (README, "Data that shows climbs"):
#
#   1. `lunar_climb`'s own collection in RUN (200 brownian + 200 heuristic episodes, seeds as `lunar_quick`'s);
#   2. 100 brownian episodes whose actions revert to a mean of (0.6, 0.0) (main engine at ~80 % thrust, lateral
#      random), on reset seeds 7,000-7,099, collected into RUN.climb and copied into RUN/data/climb;
#   3. the pipeline with preset `lunar_climb` (`lunar_padded` with V and M trained on brownian, heuristic and climb)
#      and its 8 Sim2Real2Sim iterations.
#
#   experiments/lunar_climb.sh RUN
#   PRESET=lunar_land experiments/lunar_climb.sh RUN   # the same steps with another preset of the same data
#
# Every step is skipped where done, so the script resumes where it stopped (the pipeline resumes inside a stage).
set -euo pipefail
run=${1:?usage: experiments/lunar_climb.sh RUN}
preset=${PRESET:-lunar_climb}
cd "$(dirname "$0")/.."
uv run collect_data.py --preset "$preset" --run-dir "$run"
if [ ! -f "$run/data/climb/metadata.json" ]; then
  uv run collect_data.py --preset "$preset" --run-dir "$run.climb" --mix brownian:100 --brownian-mean 0.6 0.0 \
    --seed 7000
  cp -r "$run.climb/data/brownian" "$run/data/climb.tmp" && mv "$run/data/climb.tmp" "$run/data/climb"
fi
uv run pipeline.py --preset "$preset" --run-dir "$run"
