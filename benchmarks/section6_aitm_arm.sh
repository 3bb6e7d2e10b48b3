#!/usr/bin/env bash
# Post-hoc AITM arm at section 6's primary condition (representations, r = 1, 0.5%), seeds 0-5,
# section 6's protocol (benchmarks/baselines_grid.sh COMMON flags), with none and its blend/ctr_as_cvr.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD JAX_PLATFORMS=cpu
PC=data.synthetic.positive_control
ARGS=(--config=configs/default.py --config.optimizer.learning_rate=0.003
  --config.train.early_stopping_metric=mean_auc --config.checkpoint.enabled=False
  --config.train.baseline_scorings=True --test_metrics=cvr_eauc
  --scored=blend=none:blend --scored=ctr_as_cvr=none:ctr_as_cvr
  --workdir=${OUT:-runs/section6}/aitm --epochs=30 --config.train.patience=5
  --config.data.synthetic.kind=positive_control
  --grid=$PC.shares=representations --grid=$PC.relatedness=one --grid=$PC.conversions_per_click=0.005
  --seeds=0,1,2,3,4,5 --variant="none:contrast.mode=none"
  --variant="aitm:contrast.mode=none;model.backbone=aitm")
$PY launch/experiment.py "${ARGS[@]}"
for b in none blend; do
  $PY launch/experiment.py "${ARGS[@]}" --report_only --baseline=$b \
    --columns=cvr_eauc,cvr_auc,delta_cvr_eauc,delta_cvr_eauc_p,delta_cvr_eauc_mde,delta_cvr_auc,best_step
  cp ${OUT:-runs/section6}/aitm/results.md ${OUT:-runs/section6}/aitm/vs_$b.md
done
