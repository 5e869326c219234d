#!/usr/bin/env bash
# Timings of the `paper` preset on this machine (meant for a GPU workstation), in one run:
#
#   1. benchmarks/bench_dream.py       the fused CMA-ES generation at the paper's sizes (P 64, R 16, T 1000)
#   2. benchmarks/bench_throughput.py  VAE / MDN-RNN updates, encoding, real episodes and collection
#   3. the paper preset's stages, each at the paper's model and batch sizes but with fewer
#      episodes, updates and generations (the counts below), each timed, so that the full
#      preset's time can be read off as (time per unit) x (the preset's count).
#
#   benchmarks/paper_chain.sh OUT_DIR [SCALE]
#
# OUT_DIR receives the benchmarks' JSON, every stage's log and `times.json` (seconds per stage and
# the counts run). SCALE (default 1) multiplies the stage counts. PYTHON overrides the interpreter
# (default `uv run python`); CHAIN_TIMEOUT caps each stage in seconds (default 300); EPISODES, VAE_STEPS,
# RNN_STEPS, GENERATIONS and TEST_EPISODES override the counts; SKIP_BENCH=1 skips steps 1 and 2.
set -uo pipefail
out=${1:?usage: benchmarks/paper_chain.sh OUT_DIR [SCALE]}
scale=${2:-1}
py=${PYTHON:-uv run python}
cap=${CHAIN_TIMEOUT:-300}
cd "$(dirname "$0")/.."
mkdir -p "$out"
run="$out/run"
episodes=${EPISODES:-$((160 * scale))}; vae_steps=${VAE_STEPS:-$((2000 * scale))}
rnn_steps=${RNN_STEPS:-$((400 * scale))}; generations=${GENERATIONS:-$((20 * scale))}
test_episodes=${TEST_EPISODES:-$((32 * scale))}
times="$out/times.json"
echo "{\"scale\": $scale, \"episodes\": $episodes, \"vae_steps\": $vae_steps, \"rnn_steps\": $rnn_steps," \
  "\"generations\": $generations, \"test_episodes\": $test_episodes" >"$times"

stage() {  # stage NAME COMMAND...: run, log to OUT_DIR/NAME.log, record seconds and exit status
  local name=$1; shift
  local t0=$(date +%s%N)
  timeout "$cap" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local ms=$((($(date +%s%N) - t0) / 1000000))
  local dt=$((ms / 1000)).$(printf %03d $((ms % 1000)))
  echo ", \"${name}_s\": $dt, \"${name}_rc\": $rc" >>"$times"
  echo "$name: ${dt}s (exit $rc)"
  tail -n 4 "$out/$name.log" | tr '\r' '\n' | tail -n 4
}

if [ -z "${SKIP_BENCH:-}" ]; then
stage bench_dream $py benchmarks/bench_dream.py --json "$out/bench_dream.json"
stage bench_throughput $py benchmarks/bench_throughput.py --json "$out/bench_throughput.json"
fi
stage collect $py collect_data.py --preset paper --run-dir "$run" --episodes "$episodes"
stage vae $py train_vae.py --preset paper --run-dir "$run" --steps "$vae_steps" --checkpoint-every "$vae_steps"
stage rnn $py train_rnn.py --preset paper --run-dir "$run" --steps "$rnn_steps" --checkpoint-every "$rnn_steps"
stage dream $py train_dream.py --preset paper --run-dir "$run" --generations "$generations"
stage test $py test_agent.py --preset paper --run-dir "$run" --episodes "$test_episodes" --out "$out/test"
echo "}" >>"$times"
cat "$times"
