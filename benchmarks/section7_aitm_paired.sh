#!/usr/bin/env bash
# RESULTS.md section 7 (pre-registered): PICO against AITM on the same seeds and code, at
# section 6's primary condition (positive control, shares=representations, r = 1, 0.5%
# conversions per click), fresh seeds 10-19 (seeds 0-5 of AITM were seen in section 6).
# Arms: none, pico (section 6's selected recipe: fixed tau 1.0, lambda 0.1), aitm
# (model.backbone=aitm, no contrast), aitm_pico (AITM with pico's recipe). Section 6's
# protocol: Adam 3e-3, up to 30 epochs, patience 5, early stopping on val mean_auc.
#
#   benchmarks/section7_aitm_paired.sh [WORKDIR]          # default /tmp/section7
#   STAGE=report benchmarks/section7_aitm_paired.sh DIR   # tabulate the finished runs
DEFAULT_WORKDIR=/tmp/section7
source "$(dirname "$0")/grid_env.sh"
COMMON=(--config=configs/default.py --config.optimizer.learning_rate=0.003
  --config.train.early_stopping_metric=mean_auc --config.checkpoint.enabled=False
  --test_metrics=cvr_eauc --workdir="$WORKDIR" --epochs=30 --config.train.patience=5
  --config.data.synthetic.kind=positive_control
  --grid=$PC.shares=representations --grid=$PC.relatedness=one
  --grid=$PC.conversions_per_click=0.005
  --columns=cvr_eauc,cvr_auc,delta_cvr_eauc,delta_cvr_eauc_p,delta_cvr_eauc_p_holm,delta_cvr_eauc_mde,delta_cvr_auc,best_step)
PICO="contrast.mode=fixed;contrast.weight=0.1;contrast.tau_init=1.0"
ARMS=(--variant "none:contrast.mode=none" --variant "pico:$PICO"
  --variant "aitm:contrast.mode=none;model.backbone=aitm"
  --variant "aitm_pico:$PICO;model.backbone=aitm")
run() { nice -n 10 "$PYTHON" launch/experiment.py "${COMMON[@]}" "$@"; }

if [[ "${STAGE:-all}" != report ]]; then
  run --seeds=10,11,12,13,14 "${ARMS[@]}" > "$WORKDIR/A.log" 2>&1 &
  A=$!
  run --seeds=15,16,17,18,19 "${ARMS[@]}" > "$WORKDIR/B.log" 2>&1 &
  wait $A $!
fi
S10=10,11,12,13,14,15,16,17,18,19
report() { local name=$1; shift; run --report_only --seeds=$S10 "${ARMS[@]}" "$@" > /dev/null
  for f in results.md results.csv runs.csv; do cp "$WORKDIR/$f" "$WORKDIR/${name}_$f"; done; }
# The declared family (Holm over two): pico and aitm_pico, each against aitm.
report vs_aitm --baseline=aitm --family=pico,aitm_pico \
  "--primary=shares=representations relatedness=one conversions_per_click=0.005 pico :: cvr_eauc"
# Validity (not in the family): every arm against none.
report vs_none --baseline=none
cat "$WORKDIR/vs_aitm_results.md" "$WORKDIR/vs_none_results.md"
