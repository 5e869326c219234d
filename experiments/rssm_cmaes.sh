#!/bin/bash
# RSSM + CMA-ES on a quick run's data and VAE (README, "RSSM + CMA-ES, and the RSSM's open-loop drift").
# Usage: experiments/rssm_cmaes.sh SOURCE_RUN R [TRAIN_RSSM_FLAGS...]
#   SOURCE_RUN: a run directory after its VAE stage (runs/quick_s0); R: a new run directory; further arguments go to
#   train_rssm.py (the README's first RSSM: --kl-rep-weight 0.1, the dreamer_quick preset's value until 2026-11-28).
# R gets links to SOURCE_RUN's data/ and vae/ and a copy of its rnn/latents/ where it has them (the latents of the
# same VAE; without them the M stage encodes the data), then an
# RSSM is trained for 4,800 updates of 32 x 64 steps (about the quick MDN-RNN's wall time), the linear controller is
# evolved in its dream with the quick CMA-ES budget (P 32, R 16, T 1000, 150 generations), and 100 real episodes are
# run. Every stage resumes if the script is run again.
set -euo pipefail
SOURCE=$(realpath "$1")
R=$2
shift 2
mkdir -p "$R/rnn"
[ -e "$R/data" ] || ln -s "$SOURCE/data" "$R/data"
[ -e "$R/vae" ] || ln -s "$SOURCE/vae" "$R/vae"
[ -e "$R/rnn/latents" ] || [ ! -d "$SOURCE/rnn/latents" ] || cp -r "$SOURCE/rnn/latents" "$R/rnn/"
uv run train_rssm.py --preset dreamer_quick --run-dir "$R" --steps 4800 --checkpoint-every 400 "$@"
uv run train_dream.py --preset dreamer_quick --run-dir "$R" --learner cmaes --population 32 --rollouts 16 \
    --dream-steps 1000 --generations 150
uv run test_agent.py --preset dreamer_quick --run-dir "$R" --episodes 100 --video-episodes 2
