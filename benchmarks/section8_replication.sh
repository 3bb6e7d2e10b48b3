#!/usr/bin/env bash
# RESULTS.md section 8 (pre-registered): does the default's gain replicate? The default
# recipe (fixed tau 1.0, lambda 0.1) against none at section 6's primary condition
# (positive control, shares=representations, r = 1, 0.5% conversions per click) on 20
# fresh seeds (20-39), section 6's protocol; blend and ctr_as_cvr are scored from none's
# runs (no training).
#
#   benchmarks/section8_replication.sh [WORKDIR]          # default /tmp/section8
#   STAGE=report benchmarks/section8_replication.sh DIR   # tabulate the finished runs
DEFAULT_WORKDIR=/tmp/section8
source "$(dirname "$0")/grid_env.sh"
COMMON=(--config=configs/default.py --config.optimizer.learning_rate=0.003
  --config.train.early_stopping_metric=mean_auc --config.checkpoint.enabled=False
  --config.train.baseline_scorings=True --test_metrics=cvr_eauc,cvr_auc
  --scored=blend=none:blend --scored=ctr_as_cvr=none:ctr_as_cvr
  --workdir="$WORKDIR" --epochs=30 --config.train.patience=5
  --config.data.synthetic.kind=positive_control
  --grid=$PC.shares=representations --grid=$PC.relatedness=one
  --grid=$PC.conversions_per_click=0.005
  --columns=cvr_eauc,cvr_auc,delta_cvr_eauc,delta_cvr_eauc_p,delta_cvr_eauc_mde,delta_cvr_auc,delta_cvr_auc_p,delta_cvr_auc_mde,best_step)
ARMS=(--variant "none:contrast.mode=none"
  --variant "pico:contrast.mode=fixed;contrast.weight=0.1;contrast.tau_init=1.0")
run() { nice -n 10 "$PYTHON" launch/experiment.py "${COMMON[@]}" "$@"; }

if [[ "${STAGE:-all}" != report ]]; then
  run --seeds=20,21,22,23,24,25,26,27,28,29 "${ARMS[@]}" > "$WORKDIR/A.log" 2>&1 &
  A=$!
  run --seeds=30,31,32,33,34,35,36,37,38,39 "${ARMS[@]}" > "$WORKDIR/B.log" 2>&1 &
  wait $A $!
fi
S20=$(seq -s, 20 39)
report() { local name=$1; shift; run --report_only --seeds=$S20 "${ARMS[@]}" "$@" > /dev/null
  for f in results.md results.csv runs.csv; do cp "$WORKDIR/$f" "$WORKDIR/${name}_$f"; done; }
report vs_none --baseline=none --family=pico \
  "--primary=shares=representations relatedness=one conversions_per_click=0.005 pico :: cvr_eauc"
report vs_blend --baseline=blend
cat "$WORKDIR/vs_none_results.md" "$WORKDIR/vs_blend_results.md"
