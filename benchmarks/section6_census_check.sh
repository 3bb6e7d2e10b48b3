#!/usr/bin/env bash
# Census no-harm check of section 6's default (post hoc, declared before it ran: default vs none,
# test realised income AUC (cvr_auc_all_rows) and ctr_auc, seeds 0-4, paired; early stopping on val mean_auc).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD JAX_PLATFORMS=cpu
$PY launch/preprocess.py --format=census --input=${CENSUS:?set CENSUS to census-income.test.gz (UCI Census-Income KDD)} --output=${OUT:-runs/section6}/store
COMMON=(--config=configs/census.py:backbone=mmoe,pico=true --config.data.path=${OUT:-runs/section6}/store
  --workdir=${OUT:-runs/section6}/w --seeds=0,1,2,3,4 --epochs=10
  --config.train.early_stopping_metric=mean_auc --config.train.patience=2
  --config.checkpoint.enabled=false
  --variant="none:contrast.mode=none" --variant="default:contrast.mode=fixed")
$PY launch/experiment.py "${COMMON[@]}"
$PY launch/experiment.py "${COMMON[@]}" --report_only --baseline=none --test_metrics=cvr_auc_all_rows,ctr_auc \
  --columns=ctr_auc,cvr_auc_all_rows,delta_ctr_auc,delta_cvr_auc_all_rows,tau_mean,best_step
