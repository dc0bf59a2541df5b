#!/usr/bin/env bash
# The main job on a fresh machine: a small robustness study on embedded local Ray, the
# classical baselines on the same test images, the summary table and the HTML report.
# Usage: scripts/demo.sh [PYTHON]   (make demo passes the project's .venv python)
set -euo pipefail
PY=${1:-python3}
OUT=${CRYOTUNE_DEMO_OUT:-demo-out}
STUDY="$OUT/studies/demo"

# 12 trials: l2/l1 autoencoders and (.5,.5)-GAN + l1, clean and with 20% of type A, B or C pairs
# contaminated, on 32 px images simulated inline. A study left by an interrupted run resumes.
if [ -f "$STUDY/spec.yaml" ]; then
  "$PY" -m cryotune sweep "$STUDY" --resume
else
  "$PY" -m cryotune sweep search_spaces/demo.yaml --storage "$OUT/studies"
fi
for dataset in "$STUDY"/simulated/*/; do
  "$PY" -m cryotune baselines "$dataset" --study "$STUDY" --methods nlm,ksvd,cwf
done
"$PY" -m cryotune query "$STUDY" --by label,contamination,eps --metrics test_mse,test_psnr,test_ssim --agg mean
# the best trial, chosen on validation, and its test scores at its selected epoch
"$PY" -m cryotune status "$STUDY"
# the configuration chosen on validation (never on test), its test MSE at its best epoch beside
"$PY" -m cryotune query "$STUDY" --rank-by clean
# ℓ1-AE against (.5,.5)-GAN + ℓ1, paired on type and seed, pooled over the contaminated cells
"$PY" -m cryotune compare "$STUDY" --a "label == 'l1-AE'" --b "label == '(0.5,0.5)-GAN + l1'" --where "eps > 0"
"$PY" -m cryotune report "$STUDY" -o "$OUT/demo-report.html"
