#!/bin/bash
# Dynamics kinds on the same data (issue 15): MDN-RNNs of two more seeds (also the ensemble members of the
# uncertainty-aware planner), the MDN-GRU (--kind gru) and the causal transformer, each trained from scratch on
# SOURCE_RUN's latents with the same windows and budget, then their open-loop drift on the same held-out episodes
# (experiments/drift_compare.py).
# Usage: experiments/dynamics_compare.sh SOURCE_RUN OUT [STEPS] [TF_STEPS]
#   SOURCE_RUN: a run directory after its VAE and M stages (runs/quick_s0); OUT: a new folder holding one run
#   directory per model (OUT/mdnrnn_s1, OUT/mdnrnn_s2, OUT/gru_s0, OUT/transformer_s0) and OUT/drift/. STEPS:
#   updates of each MDN-RNN and of the MDN-GRU (default 600); TF_STEPS: the transformer's (default 140: on a 2-core
#   CPU an update of the transformer (2 layers, d 256, context 64) costs about 5x the LSTM's, so 140 updates take the
#   wall time of 600 of the LSTM's).
#   Every run links SOURCE_RUN's data/ and vae/ and copies its rnn/latents/ (the first model's, once encoded); every
#   stage resumes.
set -euo pipefail
SOURCE=$(realpath "$1")
OUT=$2
STEPS=${3:-600}
TF_STEPS=${4:-140}
RECIPE=$(uv run python -c "import json,sys; print(json.load(open(sys.argv[1]))['rnn']['dataset'])" "$SOURCE/config.json")
train() {  # train NAME KIND SEED STEPS
  local R="$OUT/$1"
  mkdir -p "$R/rnn"
  [ -e "$R/data" ] || ln -s "$SOURCE/data" "$R/data"
  [ -e "$R/vae" ] || ln -s "$SOURCE/vae" "$R/vae"
  # the first model's cache once it exists: a source dataset that grew after its own last encode is encoded once
  local CACHE="$SOURCE/rnn/latents"
  [ -d "$OUT/mdnrnn_s1/rnn/latents" ] && [ "$1" != mdnrnn_s1 ] && CACHE="$OUT/mdnrnn_s1/rnn/latents"
  [ -e "$R/rnn/latents" ] || cp -r "$CACHE" "$R/rnn/"
  /usr/bin/time -f "$1: %e s" uv run train_rnn.py --preset quick --run-dir "$R" --kind "$2" --seed "$3" \
      --dataset "$RECIPE" --mirror --steps "$4" --checkpoint-every 20
}
train mdnrnn_s1 mdnrnn 1 "$STEPS"
train mdnrnn_s2 mdnrnn 2 "$STEPS"
train gru_s0 gru 0 "$STEPS"
train transformer_s0 transformer 0 "$TF_STEPS"
uv run python experiments/drift_compare.py --runs "$SOURCE" "$OUT/mdnrnn_s1" "$OUT/mdnrnn_s2" "$OUT/gru_s0" \
    "$OUT/transformer_s0" \
    --out "$OUT/drift" --context 50 --episodes 16
