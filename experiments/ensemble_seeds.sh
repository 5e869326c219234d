#!/usr/bin/env bash
# Issue 13's ensemble lever over many CMA-ES seeds, one world model (meant for a GPU machine with many cores):
#
#   1. the `quick` preset's iteration-0 world model in RUN (collect, V, and M with one more ensemble member:
#      train_rnn.py --ensemble 2), skipped where done;
#   2. for each CMA-ES seed in turn, experiments/dream_levers.py with ARMS on that world model, each in
#      OUT/seed_N/levers.json. One after the other on purpose: four seeds run at once on one H200 each ran CMA-ES at
#      about 2 s per generation (the GPU time-slices between processes, and a dream is 1,000 dependent steps of small
#      kernels), where one alone runs the whole arm, 150 generations and 20 real episodes, in about a minute.
#
#   experiments/ensemble_seeds.sh RUN OUT [SEEDS...]
#
# SEEDS default to 0 1 2 3 4. Environment: PYTHON (default `uv run python`), PRESET (default quick), ARMS (default
# "baseline ensemble2_pessimism1"), EPISODES (real test episodes per arm, default 20), DEADLINE (seconds from the
# start after which unfinished seeds are stopped, default 3000; a stopped seed resumes when the script is run
# again). Every stage's log is in OUT/*.log.
set -uo pipefail
run=${1:?usage: experiments/ensemble_seeds.sh RUN OUT [SEEDS...]}
out=${2:?usage: experiments/ensemble_seeds.sh RUN OUT [SEEDS...]}
shift 2
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2 3 4)
py=${PYTHON:-uv run python}
preset=${PRESET:-quick}
read -r -a arms <<<"${ARMS:-baseline ensemble2_pessimism1}"
deadline=$(($(date +%s) + ${DEADLINE:-3000}))
cd "$(dirname "$0")/.."
mkdir -p "$out"

left() { local s=$((deadline - $(date +%s))); echo $((s > 1 ? s : 1)); }
stage() {  # stage NAME COMMAND...: run until the deadline, log to OUT/NAME.log, print the seconds and exit status
  local name=$1; shift
  local t0=$(date +%s)
  timeout "$(left)" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: $(($(date +%s) - t0)) s (exit $rc)"
  tr '\r' '\n' <"$out/$name.log" | grep -v "it/s\|s/it\|s/ep" | tail -n 3
  return $rc
}

stage collect $py collect_data.py --preset "$preset" --run-dir "$run" || exit 1
stage vae $py train_vae.py --preset "$preset" --run-dir "$run" || exit 1
stage rnn $py train_rnn.py --preset "$preset" --run-dir "$run" --ensemble 2 || exit 1
for s in "${seeds[@]}"; do
  stage "levers_seed_$s" $py experiments/dream_levers.py --source "$run" --out "$out/seed_$s" --seed "$s" \
    --episodes "${EPISODES:-20}" --preset "$preset" --arms "${arms[@]}"
done
for s in "${seeds[@]}"; do
  echo "seed $s: $(cat "$out/seed_$s/levers.json" 2>/dev/null | tr -d '\n ' | head -c 2000)"
done
