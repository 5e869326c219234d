#!/usr/bin/env bash
# Issue 15: the downstream real score of the beta-VAE and the residual VAE. Each V variant is trained on the same
# collected data, then drives the same recipe as "Which seed decides a run" (experiments/seed_swap.sh): M with seed 0
# (600 updates of the `quick_dream_noise` preset), CMA-ES with seed 0 in M's noisy dream (150 generations), 20 real
# episodes with the road's noise 0.2 on seeds 1,000,000-1,000,019 (experiments/dream_levers.py, arm `baseline`).
#
#   experiments/vae_downstream.sh DATA_RUN OUT [STEPS [VARIANT ...]]
#
#   DATA_RUN  a run directory holding the collected data/ (and its config.json): for seed 0 of the recipe,
#             `uv run collect_data.py --preset quick_dream_noise --run-dir DATA_RUN` (collection is deterministic)
#   OUT       receives OUT/NAME (V, M; data/ linked) and OUT/NAME_es0 (the controller and its 20 episodes) for each
#             variant, and OUT/times.tsv (wall seconds of each stage)
#   STEPS     VAE updates of batch 100 (default 600, as experiments/vae_variants.sh; the preset's is 1,800)
#   VARIANT   beta0.5, beta1, beta4, residual (default: all four, in that order)
#
# Every step resumes (train_vae.py, train_rnn.py and dream_levers.py skip what is done).
set -euo pipefail
data=$(realpath "${1:?usage: experiments/vae_downstream.sh DATA_RUN OUT [STEPS [VARIANT ...]]}")
out=$(realpath -m "${2:?OUT}")
steps=${3:-600}
shift $(($# < 3 ? 2 : 3))
[ $# -gt 0 ] && variants=("$@") || variants=(beta0.5 beta1 beta4 residual)
flags_of() {  # flags_of VARIANT: train_vae.py's flags for it; fails for an unknown name
  case $1 in
    beta0.5) echo --beta 0.5 ;;
    beta1) echo --beta 1 ;;
    beta4) echo --beta 4 ;;
    residual) echo --arch residual ;;
    *) return 1 ;;
  esac
}
for name in "${variants[@]}"; do  # every name checked before anything is written
  flags_of "$name" >/dev/null || { echo "vae_downstream.sh: unknown variant '$name' (beta0.5, beta1, beta4, residual)" >&2; exit 2; }
done
cd "$(dirname "$0")/.."
mkdir -p "$out"
timed() {  # timed NAME STAGE COMMAND...: run it, append "NAME STAGE SECONDS" to OUT/times.tsv
  local name=$1 stage=$2 t0=$SECONDS
  shift 2
  "$@"
  printf '%s\t%s\t%s\n' "$name" "$stage" "$((SECONDS - t0))" >>"$out/times.tsv"
}
for name in "${variants[@]}"; do
  read -ra flags <<<"$(flags_of "$name")"
  run=$out/$name
  mkdir -p "$run"
  [ -e "$run/data" ] || ln -s "$data/data" "$run/data"
  [ -e "$run/config.json" ] || cp "$data/config.json" "$run/config.json"
  timed "$name" vae uv run train_vae.py --preset quick_dream_noise --run-dir "$run" --steps "$steps" \
    --checkpoint-every 200 "${flags[@]}"
  timed "$name" rnn uv run train_rnn.py --preset quick_dream_noise --run-dir "$run" --seed 0
  timed "$name" cmaes+test uv run python experiments/dream_levers.py --source "$run" --out "$out/${name}_es0" \
    --preset quick_dream_noise --arms baseline --seed 0 --episodes 20
done
