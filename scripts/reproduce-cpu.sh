#!/usr/bin/env bash
# The paper's robustness comparison at CPU scale (reports/reproduction/REPRODUCTION.md), grown
# in steps: every step extends its study with the cells it lacks (`cryotune sweep SPEC --extend
# STUDY`), so re-running the script after a stop continues where it ended, and a step already
# done costs one Ray start. Stop it at any point (Ctrl-C); the studies stay consistent.
# Usage: scripts/reproduce-cpu.sh [PYTHON]
#   CRYOTUNE_REPRO_OUT    where the studies go (default repro-out; checkpoints included)
#   REPRO_STEPS           the steps to run, in order (default: all, as listed below); e.g.
#                         REPRO_STEPS="commit report" copies the tables into the repository
#                         (reports/reproduction/studies/) and rebuilds the report from them
#
# Every study runs the paper's search space with --scale cpu (32 px, ResNet width 16, 1 CPU per
# trial), 6 epochs, the paper's test size (1,500 pairs) and the l1 term summed over pixels (the
# paper's norm). Trials are not repeated across studies: the report merges them, so Table 1's
# SNR 0.1 trials are also Fig. 5's eps = 0 points, Table 2's (0,0), (1,1) and (.5,.5) rows and
# Table 4's lambda = 10 and l1-AE rows.
set -euo pipefail
PY=${1:-.venv/bin/python}
OUT=${CRYOTUNE_REPRO_OUT:-repro-out}
STORE="$OUT/studies"
COMMITTED=reports/reproduction/studies
COMMON=(--scale cpu --storage "$STORE" --set epochs=6 --set max_concurrent=2
        --set dataset.simulate.n_test=1500)
AE='{method: l2_ae}, {method: l1_ae}'
AB='{method: beta_gan, pairs: [[1, 1], [0.5, 0.5]], p: 1}'

grow() {  # grow NAME [--set ...]: run search_spaces/NAME.yaml, or extend the study with it
  local name=$1; shift
  if [ -f "$STORE/$name/spec.yaml" ]; then
    "$PY" -m cryotune sweep "search_spaces/$name.yaml" "${COMMON[@]}" "$@" --extend "$STORE/$name"
  else
    "$PY" -m cryotune sweep "search_spaces/$name.yaml" "${COMMON[@]}" "$@"
  fi
}

keep() {  # keep SRC DEST: a study's tables, galleries and records, whole or not at all
  local src=$1 dest=$2 part
  [ -f "$src/spec.yaml" ] || return 0
  rm -rf "$dest.new" && mkdir -p "$dest.new"
  for part in spec.yaml trials.parquet history.parquet trials datasets; do
    cp -r "$src/$part" "$dest.new/"
  done
  rm -rf "$dest" && mv "$dest.new" "$dest"
}

step() {
  case $1 in
    # Table 1 and Fig. 7: 6 methods x SNR 0.1 and 0.05 x 3 seeds, eps 0 (36 trials); FSC of the
    # reconstructions and conformation clustering (the 30 degree view cone of 1,500 test images)
    table1) grow paper-table1 ;;
    # Fig. 5: types A, B, C at eps 0.3, the two autoencoders and two (alpha, beta)-GANs, 3 seeds
    # (36 trials; eps 0 from Table 1)
    fig5-eps0.3) grow paper-fig5-robustness --set 'eps=[0.3]' --set "methods=[$AE, $AB]" ;;
    # Table 4: (.5,.5)-GAN + lambda l1 at the paper's seven other lambdas, 3 seeds (21 trials;
    # lambda 10 and the l1-AE limit from Table 1)
    table4) grow paper-table4-lambda --set 'lambda=[0.1, 1, 5, 50, 100, 500, 10000]' \
              --set 'methods=[{method: beta_gan, pairs: [[0.5, 0.5]], p: 1}]' ;;
    # Table 2: the paper's five further (alpha, beta) pairs at both SNRs, 3 seeds (30 trials;
    # (0,0), (1,1) and (.5,.5) from Table 1)
    table2) grow paper-table2-alpha-beta --set 'methods=[{method: beta_gan, pairs: [[-0.5, -0.5], [-1, -1], [1, -1], [0.5, -0.5], [0.1, -0.1]], p: 1}]' ;;
    # Fig. 5 at eps 0.1 and 0.2 (72 trials more)
    fig5-eps) grow paper-fig5-robustness --set 'eps=[0.1, 0.2]' --set "methods=[$AE, $AB]" ;;
    # Fig. 5's two further GANs, JS-GAN + l1 and WGAN-GP + l1, at every eps and type (54 each)
    fig5-js) grow paper-fig5-robustness --set 'eps=[0.1, 0.2, 0.3]' \
               --set 'methods=[{method: js_gan, p: 1}]' ;;
    fig5-wgan) grow paper-fig5-robustness --set 'eps=[0.1, 0.2, 0.3]' \
                 --set 'methods=[{method: wgan_gp, p: 1}]' ;;
    # Fig. 7 at 3,000 test images (106 in the 30-degree view cone, where clean images of the
    # two end conformations separate): l2-AE, l1-AE and (.5,.5)-GAN + l1 at SNR 0.1 (9 trials),
    # a study of its own, since its test split is not the other studies'
    fig7)
      if [ -f "$OUT/fig7/fig7-clustering/spec.yaml" ]; then
        "$PY" -m cryotune sweep "$OUT/fig7/fig7-clustering" --resume
      else
        "$PY" -m cryotune sweep search_spaces/paper-table1.yaml "${COMMON[@]}" \
          --storage "$OUT/fig7" --set name=fig7-clustering --set dataset.simulate.n_test=3000 \
          --set dataset.simulate.snr=0.1 --set "methods=[$AE, {method: beta_gan, pairs: [[0.5, 0.5]], p: 1}]"
      fi ;;
    # Table 1's classical rows on the same test images (both SNRs); BM3D when its extra is
    # installed (pip install 'cryotune[bm3d]': a non-commercial licence)
    baselines)
      local methods=nlm,ksvd,cwf
      "$PY" -c "import bm3d" 2>/dev/null && methods+=,bm3d
      for dataset in "$STORE"/paper-table1/simulated/*/; do
        "$PY" -m cryotune baselines "$dataset" --study "$STORE/paper-table1" \
          --methods "$methods" --validate fsc
      done ;;
    # the study tables, galleries and validation records (no checkpoints, no simulated data)
    # into the repository, and the report from them alone
    commit)
      local name
      for name in paper-table1 paper-fig5-robustness paper-table4-lambda paper-table2-alpha-beta; do
        keep "$STORE/$name" "$COMMITTED/$name"
      done
      keep "$OUT/fig7/fig7-clustering" reports/reproduction/fig7/fig7-clustering ;;
    report)
      "$PY" -m cryotune report "$COMMITTED"/* \
        --title "cryotune: the paper's robustness comparison at CPU scale" \
        -o reports/reproduction/robustness.html ;;
    *) echo "unknown step: $1" >&2; return 2 ;;
  esac
}

for s in ${REPRO_STEPS:-table1 fig5-eps0.3 table4 table2 fig5-eps baselines fig5-wgan fig5-js fig7 commit report}; do
  echo "== step $s" >&2
  step "$s"
done
