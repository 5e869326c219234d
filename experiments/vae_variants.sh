#!/bin/bash
# beta-VAE and residual VAE on the same frames (issue 15): V trained four ways on SOURCE_RUN's collected data with
# the quick preset's recipe, then scored on the same held-out frames (experiments/vae_variants.py).
# Usage: experiments/vae_variants.sh SOURCE_RUN OUT [STEPS]
#   OUT/beta0.5, OUT/beta1, OUT/beta4 (the paper's conv VAE with KL weight beta) and OUT/residual (beta 1); each links
#   SOURCE_RUN's data/. STEPS: VAE updates (default 600, batch 100). Every run resumes.
set -euo pipefail
SOURCE=$(realpath "$1")
OUT=$2
STEPS=${3:-600}
train() {  # train NAME FLAGS...
  local R="$OUT/$1"; shift
  mkdir -p "$R"
  [ -e "$R/data" ] || ln -s "$SOURCE/data" "$R/data"
  /usr/bin/time -f "$(basename "$R"): %e s" uv run train_vae.py --preset quick --run-dir "$R" --steps "$STEPS" \
      --checkpoint-every 200 "$@"
}
train beta0.5 --beta 0.5
train beta1 --beta 1
train beta4 --beta 4
train residual --arch residual
uv run python experiments/vae_variants.py --runs "$OUT/beta0.5" "$OUT/beta1" "$OUT/beta4" "$OUT/residual" \
    --data "$SOURCE/data" --out "$OUT"
