#!/usr/bin/env bash
# Issue 13: does CMA-ES in an ensemble of M with pessimism take the lottery out of M's seed? The M of
# experiments/seed_swap.sh (one V, one data set, M seeds 0-3) put together as one ensemble and CMA-ES run in it
# (README, "An ensemble of M seeds").
#
#   experiments/ensemble_swap.sh SWAP_OUT OUT ES M0 M1 [M ...]
#
#   SWAP_OUT  seed_swap.sh's OUT: SWAP_OUT/mS holds M trained with seed S (and its vae/, config.json, data link)
#   OUT       receives OUT/m<M0>+<M1>+..., the ensemble's run directory: V, data and M of mM0 (member 0, the M the
#             agent drives with), mM1 ... as members 1 ... K-1 (rnn/members/K/ckpt), rnn.ensemble K in its
#             config.json; and OUT/m<M0>+<M1>+..._esES, experiments/dream_levers.py's arm ensembleK_pessimism1 (CMA-ES
#             with seed ES, 150 generations in the noisy dream dealt over the K members, fitness mean - 1 x spread
#             over members; then 20 real episodes with the road's noise 0.2 on seeds 1,000,000-1,000,019)
#   ES        CMA-ES seed
#   M0 M1 ... the M seeds, member 0 first (2 to 4 of them: the arms dream_levers.py has)
#
# Resumes: the ensemble directory is built once (its parts are only added where missing) and dream_levers.py skips
# an arm that is done. Nothing in SWAP_OUT is written.
set -euo pipefail
usage="usage: experiments/ensemble_swap.sh SWAP_OUT OUT ES M0 M1 [M ...]"
swap=$(realpath "${1:?$usage}")
out=$(realpath -m "${2:?$usage}")  # relative to where the script is called from, like SWAP_OUT
es=${3:?$usage}
shift 3
[ $# -ge 2 ] && [ $# -le 4 ] || { echo "$usage (2 to 4 M seeds, got $#)" >&2; exit 2; }
[[ $es =~ ^[0-9]+$ ]] || { echo "ES: a CMA-ES seed is a non-negative integer, got '$es'" >&2; exit 2; }
for m in "$@"; do
  [ -e "$swap/m$m/rnn/ckpt" ] || { echo "$swap/m$m/rnn/ckpt: no M of seed $m; train it with experiments/seed_swap.sh" >&2; exit 2; }
done
k=$#
name=m$(IFS=+; echo "$*")
run=$out/$name
cd "$(dirname "$0")/.."
mkdir -p "$run/rnn/members"
first=$swap/m$1
[ -e "$run/data" ] || ln -s "$(realpath "$first/data")" "$run/data"
[ -e "$run/vae" ] || cp -r "$first/vae" "$run/vae"
[ -e "$run/rnn/ckpt" ] || cp -r "$first/rnn/ckpt" "$run/rnn/ckpt"
[ -e "$run/rnn/latents" ] || ln -s "$first/rnn/latents" "$run/rnn/latents"
i=1
for m in "${@:2}"; do
  mkdir -p "$run/rnn/members/$i"
  [ -e "$run/rnn/members/$i/ckpt" ] || cp -r "$swap/m$m/rnn/ckpt" "$run/rnn/members/$i/ckpt"
  i=$((i + 1))
done
if [ ! -e "$run/config.json" ]; then
  python3 - "$first/config.json" "$run/config.json" "$k" <<'PY'
import json, os, sys
source, dest, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = json.load(open(source))
config["rnn"]["ensemble"] = k
with open(dest + ".tmp", "w") as f:
    json.dump(config, f, indent=2)
os.replace(dest + ".tmp", dest)
PY
fi
uv run python experiments/dream_levers.py --source "$run" --out "${run}_es$es" --preset quick_dream_noise \
  --arms "ensemble${k}_pessimism1" --seed "$es" --episodes 20
