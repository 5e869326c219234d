#!/usr/bin/env bash
# Issue 15's planner comparison on one agent, the same real episodes for every condition:
#   controller      C alone (the evolved linear controller)
#   cem             CEM from scratch (each search warm-started from the last plan)
#   cem_controller  CEM whose every search starts from C's plan in the dream
#   cem_offroad     cem_controller with the off-road constraint (a plan spending > 50 % of its horizon at a
#                   predicted reward < 0 is rejected)
#   cem_ensemble    cem_controller scoring plans in an ensemble (the agent's M + ENSEMBLE_RUNS) by mean return
#                   minus LAMBDA x disagreement
# Usage: experiments/cem_eval.sh AGENT_RUN OUT [ENSEMBLE_RUNS]
#   AGENT_RUN: a run directory with V, M and C (e.g. a shipped agent); OUT: receives CONDITION.json (test_agent.py's
#   results) and times.json. ENSEMBLE_RUNS: comma-separated runs whose M shares AGENT_RUN's V (experiments/
#   dynamics_compare.sh makes them); without it the last condition is skipped.
# Environment: PYTHON (default `uv run python`), EPISODES (50), WORKERS (0 = one per core), MAX_STEPS (1000), CAP (s per
# condition, 600), LAMBDA (1.0), CEM (extra flags for every planner, e.g. "--cem.candidates 200 --cem.iterations 4"
# on a CPU; PlaNet's H 12, N 1000, k 100, I 10 by default).
set -uo pipefail
agent=${1:?usage: experiments/cem_eval.sh AGENT_RUN OUT [ENSEMBLE_RUNS]}
out=${2:?usage: experiments/cem_eval.sh AGENT_RUN OUT [ENSEMBLE_RUNS]}
ens=${3:-}
py=${PYTHON:-uv run python}
cap=${CAP:-600}
mkdir -p "$out"
common=(--run-dir "$agent" --episodes "${EPISODES:-50}" --workers "${WORKERS:-0}" --max-steps "${MAX_STEPS:-1000}" --no-video)
read -r -a cem <<<"${CEM:-}"
times="$out/times.json"
echo "{" >"$times"
condition() {  # condition NAME FLAGS...: one test_agent.py run, its results in OUT/NAME.json
  local name=$1; shift
  local t0=$(date +%s)
  timeout "$cap" $py test_agent.py "${common[@]}" --out "$out/$name/results.json" "$@" 2>&1 | tr '\r' '\n' \
    | grep -v "s/ep" | tail -n 3
  cp "$out/$name/results.json" "$out/$name.json" 2>/dev/null && rm -r "$out/$name"
  echo "\"$name\": $(($(date +%s) - t0))," >>"$times"
}
condition controller
condition cem --policy cem "${cem[@]}"
condition cem_controller --policy cem-controller "${cem[@]}"
condition cem_offroad --policy cem-controller --cem.offroad-threshold 0.5 "${cem[@]}"
[ -n "$ens" ] && condition cem_ensemble --policy cem-controller --ensemble "$ens" \
    --cem.uncertainty-weight "${LAMBDA:-1.0}" "${cem[@]}"
echo "\"done\": true}" >>"$times"
