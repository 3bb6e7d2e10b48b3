#!/usr/bin/env bash
# The issue-18 grid (RESULTS.md section 4): does inter-task contrast transfer where
# explicit transfer does? Positive-control data (pico_jax/data/positive_control.py),
# sizes fixed before any run: 100,000 rows (80,000 train / 10,000 val / 10,000 test),
# 300 users, 200 items, latent_dim 4, signal 1.5, nuisance scale 0.5 (configs/default.py
# data.synthetic.positive_control). Seeds are paired: seed s draws the data (data seed
# -1 follows seed) and initialises every arm of seed s.
#
#   benchmarks/pico_grid.sh [WORKDIR]          # default /tmp/pico_grid
#   STAGE=report benchmarks/pico_grid.sh DIR   # tabulate the finished runs only
#
# Protocol (fixed before any run of the grid; RESULTS.md section 4): MMoE, Adam at 3e-3,
# batch 512, up to 30 epochs (4,680 steps) evaluated every epoch, early stopping on val
# mean_eauc (the mean of the CTR and CVR expected AUCs) with patience 5; test is scored
# at the best val epoch. Arms: none (MMoE/ESMM), transfer (model.transfer=ctr_logit),
# oracle (model.oracle_feature), aitm, PICO fixed tau 0.2 at lambda 0.003 / 0.01 / 0.03
# under the ESMM loss (the arm "pico" is the lambda with the best mean val cvr_eauc per
# condition: --select), PICO personalised (contrast.tau_gradient=gradient_agreement,
# lambda 0.01), and at the primary condition PICO fixed lambda 0.01 under a clicked-only
# CVR loss with its own none_clicked baseline. Two processes share the 2 CPU cores: A
# runs the primary condition (r = 1, 0.5% conversions per click), then the r = 1 map at
# 2% and 10%; B runs r = 0 at 0.5%, mixed r at 0.5%, then the r = 0 map. The first
# passes (3 or 5 seeds where 10 did not fit the first estimate of the budget) ran first;
# the extension, declared before any result was read, completes them to 10 seeds and
# adds oracle and lambda 0.003 / 0.03 to the map cells. A finished run is never rerun,
# so the script as a whole is the grid. The persistent compilation cache lets runs that
# differ only in data reuse the compiled steps.
DEFAULT_WORKDIR=/tmp/pico_grid
source "$(dirname "$0")/grid_env.sh"
COMMON=(--config=configs/default.py --workdir="$WORKDIR" --epochs=30 --baseline=none
  --config.data.synthetic.kind=positive_control --config.optimizer.learning_rate=0.003
  --config.train.early_stopping_metric=mean_eauc --config.train.patience=5
  --config.checkpoint.enabled=False --test_metrics=cvr_eauc
  "--select=pico=pico_l0.003,pico_l0.01,pico_l0.03:cvr_eauc"
  --family=pico,personal
  "--primary=relatedness=one conversions_per_click=0.005 pico :: cvr_eauc"
  --columns=cvr_eauc,ctcvr_eauc,ctr_eauc,cvr_auc,delta_cvr_eauc,delta_cvr_eauc_p,delta_cvr_eauc_p_holm,delta_cvr_eauc_mde,delta_ctcvr_eauc,delta_ctr_eauc,selected,tau_mean,tau_r_spearman,best_step)
NONE="none:contrast.mode=none"
TRANSFER="transfer:contrast.mode=none;model.transfer=ctr_logit"
ORACLE="oracle:contrast.mode=none;model.oracle_feature=True"
AITM="aitm:contrast.mode=none;model.backbone=aitm"
pico() { echo "pico_l$1:contrast.mode=fixed;contrast.weight=$1;contrast.tau_init=0.2"; }
CLICKED_LOSS="loss.cvr_weight=1.0;loss.ctcvr_weight=0.0"
CLICKED="pico_clicked:contrast.mode=fixed;contrast.weight=0.01;contrast.tau_init=0.2;$CLICKED_LOSS"
NONE_CLICKED="none_clicked:contrast.mode=none;$CLICKED_LOSS"
PERSONAL="personal:contrast.mode=personalized;contrast.weight=0.01;contrast.tau_init=0.2;contrast.tau_gradient=gradient_agreement"
SEEDS10=0,1,2,3,4,5,6,7,8,9
run() { "$PYTHON" launch/experiment.py "${COMMON[@]}" "$@"; }

if [[ "${STAGE:-all}" == report ]]; then
  run --report_only --grid=$PC.relatedness=one,zero,mixed \
    --grid=$PC.conversions_per_click=0.005,0.02,0.1 --seeds=$SEEDS10 \
    --variant "$NONE" --variant "$TRANSFER" --variant "$ORACLE" --variant "$AITM" \
    --variant "$(pico 0.003)" --variant "$(pico 0.01)" --variant "$(pico 0.03)" \
    --variant "$PERSONAL" --variant "$CLICKED" --variant "$NONE_CLICKED"
  exit 0
fi

MAP=(--variant "$NONE" --variant "$TRANSFER" --variant "$ORACLE" --variant "$(pico 0.01)"
  --variant "$(pico 0.003)" --variant "$(pico 0.03)")
{
  run --grid=$PC.relatedness=one --grid=$PC.conversions_per_click=0.005 --seeds=$SEEDS10 \
    --variant "$NONE" --variant "$TRANSFER" --variant "$ORACLE" --variant "$(pico 0.01)" \
    --variant "$(pico 0.003)" --variant "$(pico 0.03)" --variant "$PERSONAL" --variant "$AITM"
  run --grid=$PC.relatedness=one --grid=$PC.conversions_per_click=0.005 --seeds=0,1,2,3,4 \
    --baseline=none_clicked --variant "$NONE_CLICKED" --variant "$CLICKED"
  run --grid=$PC.relatedness=one --grid=$PC.conversions_per_click=0.02,0.1 --seeds=0,1,2 \
    --variant "$NONE" --variant "$TRANSFER" --variant "$(pico 0.01)"
  # Extension (declared in RESULTS.md section 4 before any result was read).
  run --grid=$PC.relatedness=one --grid=$PC.conversions_per_click=0.005 --seeds=$SEEDS10 \
    --baseline=none_clicked --variant "$NONE_CLICKED" --variant "$CLICKED"
  run --grid=$PC.relatedness=one --grid=$PC.conversions_per_click=0.02,0.1 --seeds=$SEEDS10 \
    "${MAP[@]}"
} > "$WORKDIR/A.log" 2>&1 &
A=$!
{
  run --grid=$PC.relatedness=zero --grid=$PC.conversions_per_click=0.005 --seeds=$SEEDS10 \
    --variant "$NONE" --variant "$TRANSFER" --variant "$ORACLE" --variant "$(pico 0.01)" \
    --variant "$(pico 0.003)" --variant "$(pico 0.03)" --variant "$PERSONAL"
  run --grid=$PC.relatedness=mixed --grid=$PC.conversions_per_click=0.005 --seeds=0,1,2,3,4 \
    --variant "$NONE" --variant "$TRANSFER" --variant "$ORACLE" --variant "$(pico 0.01)" \
    --variant "$PERSONAL"
  run --grid=$PC.relatedness=zero --grid=$PC.conversions_per_click=0.02,0.1 --seeds=0,1,2 \
    --variant "$NONE" --variant "$TRANSFER" --variant "$(pico 0.01)"
  # Extension (declared in RESULTS.md section 4 before any result was read).
  run --grid=$PC.relatedness=mixed --grid=$PC.conversions_per_click=0.005 --seeds=$SEEDS10 \
    --variant "$NONE" --variant "$TRANSFER" --variant "$ORACLE" --variant "$(pico 0.01)" \
    --variant "$PERSONAL"
  run --grid=$PC.relatedness=zero --grid=$PC.conversions_per_click=0.02,0.1 --seeds=$SEEDS10 \
    "${MAP[@]}"
} > "$WORKDIR/B.log" 2>&1 &
B=$!
wait $A $B
STAGE=report "$0" "$WORKDIR"
