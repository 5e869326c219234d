#!/usr/bin/env bash
# One preset, several training seeds, iteration 0 only, on a GPU machine with many cores (issue 13's "three runs of
# the recipe"), inside one deadline:
#
#   1. the first seed's collection on all CPU cores, then the next seeds' collections one after the other in the
#      background (JAX_PLATFORMS=cpu) while the GPU trains, so the GPU waits for the environment only once. Measured
#      on an H200 with 16 cores (2026-11-30, quick_ensemble): 14 background workers starved the training process's
#      host side (V 53 s instead of 28, M 90 s instead of 79, CMA-ES 222 s instead of 59), so the default is 8;
#   2. per seed, `pipeline.py --preset PRESET --seed S --iterations 0` (collect, V, M, CMA-ES in the dream, a real
#      test of TEST_EPISODES episodes without video), one GPU process at a time (processes sharing one GPU time-slice
#      it: a dream is 1,000 dependent steps of small kernels);
#   3. each finished seed's agent (config.json and the latest step of every checkpoint, without optimiser states:
#      V, M and its ensemble members, C) packed into OUT/agents.tgz.part-* (15 MB pieces), to be tested further
#      elsewhere: `cat OUT/agents.tgz.part-* | tar xz -C runs/`.
#
#   experiments/gpu_seeds.sh PRESET OUT SEED [SEED ...]
#
# Environment: PYTHON (default `uv run python`), DEADLINE (seconds from the start after which unfinished work is
# stopped, default 540), TEST_EPISODES (default 20), WORKERS (collection workers of the seeds after the first,
# default 8), RUNS (where the run directories go, default runs/gpu_seeds). Logs: RUNS/logs/seed_S.log and
# collect_S.log, packed into OUT/logs.tgz at the end; summary: OUT/summary.json (each seed's pipeline.json). OUT
# receives only these files and the agents' pieces (a device machine returns few files).
#
# As run on an H200 (wheels of the packages its image lacks installed to /tmp/site first):
#   PYTHONPATH=/tmp/site:$PWD/src PYTHON=python3 DEADLINE=505 TEST_EPISODES=16 RUNS=/tmp/gpu_runs \
#     experiments/gpu_seeds.sh quick_ensemble $OUT 0 1 2
set -uo pipefail
usage="usage: experiments/gpu_seeds.sh PRESET OUT SEED [SEED ...]"
preset=${1:?$usage}
out=${2:?$usage}
shift 2
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || { echo "$usage" >&2; exit 2; }
for s in "${seeds[@]}"; do [[ $s =~ ^[0-9]+$ ]] || { echo "SEED must be a non-negative integer, got $s" >&2; exit 2; }; done
py=${PYTHON:-uv run python}
runs=${RUNS:-runs/gpu_seeds}
cd "$(dirname "$0")/.."
[ -f "configs/$preset.json" ] || { echo "PRESET $preset: no configs/$preset.json" >&2; exit 2; }
start=$(date +%s)
deadline=$((start + ${DEADLINE:-540}))
log="$runs/logs"
mkdir -p "$out" "$log"
left() { local s=$((deadline - $(date +%s))); echo $((s > 1 ? s : 1)); }

# The preset with a short test and no video, under a name of its own (the run records it), for this script's run.
test_preset="${preset}_gpu_test"
[ -e "configs/$test_preset.json" ] && { echo "configs/$test_preset.json exists: move it away first" >&2; exit 2; }
trap 'rm -f "configs/$test_preset.json"' EXIT
$py - "$preset" "$test_preset" "${TEST_EPISODES:-20}" <<'EOF'
import json, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = json.load(open(f"configs/{src}.json"))
cfg.setdefault("test", {}).update({"episodes": n, "video": False})
json.dump(cfg, open(f"configs/{dst}.json", "w"), indent=1)
EOF

collect() {  # collect SEED WORKERS: seed's collection on the CPU cores (JAX_PLATFORMS=cpu), into its run directory
  local s=$1 cseed
  cseed=$($py -c "from worldmodels.config import load_preset, with_seed
print(with_seed(load_preset('$test_preset'), $s).collect.seed)") || return 1
  JAX_PLATFORMS=cpu timeout "$(left)" $py collect_data.py --preset "$test_preset" --run-dir "$runs/seed_$s" \
    --seed "$cseed" --workers "$2" >"$log/collect_$s.log" 2>&1
  local rc=$?
  echo "seed $s collection: exit $rc ($(($(date +%s) - start)) s)"
  return $rc
}

collect "${seeds[0]}" 0  # all cores
(for s in "${seeds[@]:1}"; do collect "$s" "${WORKERS:-8}"; touch "$log/collected_$s"; done) &  # while the GPU trains
for s in "${seeds[@]}"; do
  while [ "$s" != "${seeds[0]}" ] && [ ! -e "$log/collected_$s" ] && [ "$(left)" -gt 1 ]; do sleep 2; done
  t0=$(date +%s)
  timeout "$(left)" $py pipeline.py --preset "$test_preset" --run-dir "$runs/seed_$s" --seed "$s" --iterations 0 \
    >"$log/seed_$s.log" 2>&1
  echo "seed $s pipeline: exit $? in $(($(date +%s) - t0)) s ($(($(date +%s) - start)) s in all)"
  tr '\r' '\n' <"$log/seed_$s.log" | grep -v "it/s\|s/it\|s/ep\|step/s\|ep/s" | tail -n 12
done
wait

# Pack the finished agents: config.json and the latest step of every checkpoint, without optimiser states.
pack=$(mktemp -d)
$py - "$runs" "$out" "$pack" <<'EOF'
import json, shutil, sys
from pathlib import Path
runs, out, pack = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
summary = {}
for run in sorted(runs.glob("seed_*")):
    if (run / "pipeline.json").is_file():
        summary[run.name] = json.loads((run / "pipeline.json").read_text())
    if not (run / "controller" / "ckpt").is_dir():
        continue
    dst = pack / run.name
    for f in ["config.json", "pipeline.json", "rnn/delusion.json", "rnn/ensemble/metrics.jsonl"]:
        if (run / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / f, dst / f)
    for ckpt in run.rglob("ckpt"):
        steps = [p for p in ckpt.iterdir() if p.name.isdigit()]
        if steps and "data" not in ckpt.parts:
            last = max(steps, key=lambda p: int(p.name))
            shutil.copytree(last, dst / ckpt.relative_to(run) / last.name, ignore=shutil.ignore_patterns("opt"))
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: v.get("score") for k, v in summary.items()}, indent=1)[:3000])
EOF
if [ -n "$(ls "$pack")" ]; then
  tar czf - -C "$pack" . | split -b 15m - "$out/agents.tgz.part-"
fi
tar czf "$out/logs.tgz" -C "$log" .
ls -la "$out"
echo "done in $(($(date +%s) - start)) s"
