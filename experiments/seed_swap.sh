#!/usr/bin/env bash
# Issue 13: which seed decides a run of the `quick_dream_noise` recipe at iteration 0? Data and V held fixed, M's
# and CMA-ES's seeds swapped one at a time (README, "Which seed decides a run").
#
#   experiments/seed_swap.sh DATA_RUN VAE_RUN OUT [M:ES ...]
#
#   DATA_RUN  a run directory holding the collected data/ (and its config.json): for seed 0 of the recipe,
#             `uv run collect_data.py --preset quick_dream_noise --run-dir DATA_RUN` (collection is deterministic)
#   VAE_RUN   the run directory whose vae/ is copied (pretrained/carracing: the V of seed 0's data)
#   OUT       receives OUT/mS (M trained with seed S on DATA_RUN's data and that V, 600 updates, the preset's M)
#             and OUT/mS_esE (CMA-ES with seed E in mS's noisy dream, 150 generations, then 20 real episodes with
#             the road's noise 0.2 on seeds 1,000,000-1,000,019; experiments/dream_levers.py, arm `baseline`)
#   M:ES      the pairs to run, in order (default: 0:0 1:0 0:1)
#
# RNN_STEPS=N (environment) trains each M for N updates instead of the preset's 600 (e.g. M stopped early).
#
# Every step resumes (train_rnn.py and dream_levers.py skip what is done); M of another seed reuses the first M's
# encoded latents.
set -euo pipefail
data=$(realpath "${1:?usage: experiments/seed_swap.sh DATA_RUN VAE_RUN OUT [M:ES ...]}")
vae=$(realpath "${2:?VAE_RUN}")
out=$(realpath -m "${3:?OUT}")  # like DATA_RUN and VAE_RUN, relative to where the script is called from
shift 3
[ $# -gt 0 ] && pairs=("$@") || pairs=(0:0 1:0 0:1)
cd "$(dirname "$0")/.."
mkdir -p "$out"
for pair in "${pairs[@]}"; do
  m=${pair%%:*} es=${pair##*:}
  run=$out/m$m
  mkdir -p "$run/rnn"
  [ -e "$run/data" ] || ln -s "$data/data" "$run/data"
  [ -e "$run/vae" ] || cp -r "$vae/vae" "$run/vae"
  [ -e "$run/config.json" ] || cp "$data/config.json" "$run/config.json"
  first=$(ls -d "$out"/m*/rnn/latents 2>/dev/null | head -1 || true)
  [ -e "$run/rnn/latents" ] || [ -z "$first" ] || cp -r "$first" "$run/rnn/"
  uv run train_rnn.py --preset quick_dream_noise --run-dir "$run" --seed "$m" ${RNN_STEPS:+--steps "$RNN_STEPS"}
  uv run python experiments/dream_levers.py --source "$run" --out "$out/m${m}_es$es" --preset quick_dream_noise \
    --arms baseline --seed "$es" --episodes 20
done
