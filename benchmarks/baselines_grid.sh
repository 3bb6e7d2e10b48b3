#!/usr/bin/env bash
# RESULTS.md section 6: does PICO beat the simplest transfer? Positive-control data with
# the new generator axis (data.synthetic.positive_control.shares=representations: the
# conversion shares the click's latents, not its score) beside section 4's data
# (shares=scores, bit-identical), and section 3's generator as a no-harm check. Every
# choice is made on REALISED validation metrics: early stopping on val mean_auc, the
# (lambda, tau) of PICO on the mean val cvr_auc of seeds 0-2 at the primary condition,
# the blend weight on val log-loss (pico_jax/scorings.py). Expected AUC only reports test.
#
#   benchmarks/baselines_grid.sh [WORKDIR]          # default /tmp/baselines_grid
#   STAGE=report benchmarks/baselines_grid.sh DIR   # tabulate the finished runs only
#
# Protocol (RESULTS.md section 6, fixed before any run): MMoE, Adam 3e-3, batch 512, up
# to 30 epochs evaluated every epoch, patience 5, test at the best val epoch; every run
# also scores its test split by pCTR (ctr_as_cvr) and by the blend
# (config.train.baseline_scorings), which become the arms of the same names (--scored),
# derived from `none`'s runs at no training cost.
# Stage 1 (two processes): at the primary condition (shares=representations, r = 1,
# 0.5% conversions per click) none and oracle on seeds 0-2 and PICO fixed tau over
# lambda {0.01, 0.03, 0.1} x tau {0.1, 0.2, 0.6, 1.0} on seeds 0-2. Selection: the member
# with the best mean val cvr_auc (selected.txt). Stage 2 (two processes) trains `pico`
# (the selected settings) and the other arms; a finished run is never rerun.
DEFAULT_WORKDIR=/tmp/baselines_grid
source "$(dirname "$0")/grid_env.sh"
EPOCH_FLAGS=(--config=configs/default.py --config.optimizer.learning_rate=0.003
  --config.train.early_stopping_metric=mean_auc --config.checkpoint.enabled=False
  --config.train.baseline_scorings=True --test_metrics=cvr_eauc
  --scored=blend=none:blend --scored=ctr_as_cvr=none:ctr_as_cvr)
COMMON=("${EPOCH_FLAGS[@]}" --workdir="$WORKDIR" --epochs=30 --config.train.patience=5
  --config.data.synthetic.kind=positive_control
  --columns=cvr_eauc,ctcvr_eauc,cvr_auc,delta_cvr_eauc,delta_cvr_eauc_p,delta_cvr_eauc_p_holm,delta_cvr_eauc_mde,delta_ctcvr_eauc,delta_cvr_auc,selected,tau_mean,tau_r_spearman,blend/weight,best_step)
PRIMARY_AT=(--grid=$PC.shares=representations --grid=$PC.relatedness=one
  --grid=$PC.conversions_per_click=0.005)
at() { echo --grid=$PC.shares=$1 --grid=$PC.relatedness=$2 --grid=$PC.conversions_per_click=0.005; }
NONE="none:contrast.mode=none"
ORACLE="oracle:contrast.mode=none;model.oracle_feature=True"
TRANSFER="transfer:contrast.mode=none;model.transfer=ctr_logit"
LAMBDAS=(0.01 0.03 0.1)
TAUS=(0.1 0.2 0.6 1.0)
member() { echo "pico_l$1_t$2:contrast.mode=fixed;contrast.weight=$1;contrast.tau_init=$2"; }
MEMBERS=()
for l in "${LAMBDAS[@]}"; do for t in "${TAUS[@]}"; do MEMBERS+=(--variant "$(member $l $t)"); done; done
NAMES=$(for l in "${LAMBDAS[@]}"; do for t in "${TAUS[@]}"; do printf 'pico_l%s_t%s,' $l $t; done; done)
SELECT="--select=pico_selected=${NAMES%,}:cvr_auc"
run() { nice -n 10 "$PYTHON" launch/experiment.py "${COMMON[@]}" "$@"; }
# Section 3's generator at its sparsest level, section 3's protocol (12 epochs, patience 2).
regime() { nice -n 10 "$PYTHON" launch/experiment.py "${EPOCH_FLAGS[@]}" --workdir="$WORKDIR/regime" \
  --epochs=12 --config.train.patience=2 --config.data.synthetic.num_rows=100000 \
  --config.data.synthetic.val_fraction=0.2 --config.data.synthetic.test_fraction=0.3 \
  --grid=data.synthetic.cvr_bias=-6.0 --baseline=none \
  --columns=cvr_auc,cvr_eauc,ctcvr_auc,delta_cvr_auc,delta_cvr_auc_p,delta_cvr_auc_mde,delta_cvr_eauc,delta_ctcvr_auc,blend/weight,best_step "$@"; }

stage1() {
  { run "${PRIMARY_AT[@]}" --seeds=0,1,2 --variant "$NONE" \
      --variant "$(member 0.01 0.1)" --variant "$(member 0.01 0.2)" --variant "$(member 0.01 0.6)" \
      --variant "$(member 0.01 1.0)" --variant "$(member 0.03 0.1)" --variant "$(member 0.03 0.2)"
  } > "$WORKDIR/A1.log" 2>&1 &
  local a=$!
  { run "${PRIMARY_AT[@]}" --seeds=0,1,2 --variant "$ORACLE" \
      --variant "$(member 0.03 0.6)" --variant "$(member 0.03 1.0)" --variant "$(member 0.1 0.1)" \
      --variant "$(member 0.1 0.2)" --variant "$(member 0.1 0.6)" --variant "$(member 0.1 1.0)"
  } > "$WORKDIR/B1.log" 2>&1 &
  wait $a $!
}

select_settings() {  # the member with the best mean val cvr_auc over seeds 0-2 -> selected.txt
  run --report_only "${PRIMARY_AT[@]}" --seeds=0,1,2 --baseline=none --variant "$NONE" \
    "${MEMBERS[@]}" "$SELECT" > /dev/null
  cp "$WORKDIR/results.md" "$WORKDIR/selection.md"
  "$PYTHON" - "$WORKDIR" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/results.csv")))
chosen = [r["selected"] for r in rows if r["point"].endswith(" pico_selected")]
open(f"{sys.argv[1]}/selected.txt", "w").write(chosen[0] + "\n")
EOF
}

if [[ "${STAGE:-all}" != report ]]; then
  stage1
  select_settings
fi
CHOSEN=$(cat "$WORKDIR/selected.txt")  # pico_l<lambda>_t<tau>
LAMBDA=${CHOSEN#pico_l}; LAMBDA=${LAMBDA%%_t*}; TAU=${CHOSEN##*_t}
FIXED="contrast.mode=fixed;contrast.weight=$LAMBDA;contrast.tau_init=$TAU"
PICO="pico:$FIXED"
PICO_TRANSFER="pico_transfer:$FIXED;model.transfer=ctr_logit"
# tau_init 0.2: the learned tau's start as the grid ran (the default until section 6).
LEARNED="contrast.mode=personalized;contrast.weight=$LAMBDA;contrast.tau_init=0.2;contrast.tau_gradient=gradient_agreement"
PERSONAL="personal:$LEARNED"
SHUFFLED="shuffled:$LEARNED;contrast.tau_source=shuffled"
ORACLE_TAU="oracle_tau:contrast.mode=fixed;contrast.weight=$LAMBDA;contrast.tau_init=0.2;contrast.tau_source=oracle;contrast.tau_min=0.1;contrast.tau_max=1.0"
S6=0,1,2,3,4,5
S10=0,1,2,3,4,5,6,7,8,9

if [[ "${STAGE:-all}" == report ]]; then
  report() { local name=$1; shift; run --report_only "$@" > /dev/null
    for f in results.md results.csv runs.csv; do cp "$WORKDIR/$f" "$WORKDIR/${name}_$f"; done; }
  ALL_AT=(--grid=$PC.shares=representations,scores --grid=$PC.relatedness=one,zero,mixed
    --grid=$PC.conversions_per_click=0.005 --seeds=$S10)
  ARMS=(--variant "$NONE" --variant "$ORACLE" --variant "$TRANSFER" --variant "$PICO"
    --variant "$PICO_TRANSFER" --variant "$PERSONAL" --variant "$SHUFFLED" --variant "$ORACLE_TAU")
  # The primary comparison and the Holm family: pico against blend at every condition.
  report primary "${ALL_AT[@]}" "${ARMS[@]}" --baseline=blend --family=pico \
    "--primary=shares=representations relatedness=one conversions_per_click=0.005 pico :: cvr_eauc"
  report vs_none "${ALL_AT[@]}" "${ARMS[@]}" --baseline=none
  # Added after the results (not pre-registered): pico against the pCTR score itself.
  report vs_ctr_as_cvr "${ALL_AT[@]}" --variant "$NONE" --variant "$PICO" --baseline=ctr_as_cvr
  report tau_vs_shuffled "${ALL_AT[@]}" --variant "$PERSONAL" --variant "$SHUFFLED" --baseline=shuffled
  report tau_vs_fixed "${ALL_AT[@]}" --variant "$PICO" --variant "$PERSONAL" \
    --variant "$ORACLE_TAU" --baseline=pico
  report selection "${PRIMARY_AT[@]}" --seeds=0,1,2 --baseline=none --variant "$NONE" \
    "${MEMBERS[@]}" "$SELECT" --columns=val_cvr_auc,cvr_eauc,delta_cvr_eauc,delta_cvr_auc,selected,best_step
  regime --report_only --seeds=$S6 --variant "$NONE" --variant "$PICO" > /dev/null
  cp "$WORKDIR/regime/results.md" "$WORKDIR/regime/vs_none_results.md"
  regime --report_only --seeds=$S6 --variant "$NONE" --variant "$PICO" \
    --baseline=ctr_as_cvr > /dev/null
  cp "$WORKDIR/regime/results.md" "$WORKDIR/regime/vs_ctr_as_cvr_results.md"
  cat "$WORKDIR"/primary_results.md
  exit 0
fi

# Stage 2: each run is trained by one process only (the tables come from the report).
{
  run "${PRIMARY_AT[@]}" --seeds=$S10 --variant "$PICO" --variant "$NONE"
  run "${PRIMARY_AT[@]}" --seeds=$S6 --variant "$TRANSFER" --variant "$PICO_TRANSFER"
  run $(at representations mixed) --seeds=$S6 --variant "$NONE" --variant "$PICO" \
    --variant "$ORACLE_TAU"
} > "$WORKDIR/A2.log" 2>&1 &
A=$!
{
  run "${PRIMARY_AT[@]}" --seeds=$S10 --variant "$ORACLE"
  run $(at representations mixed) --seeds=$S6 --variant "$PERSONAL" --variant "$SHUFFLED"
  run $(at scores one) --seeds=$S6 --variant "$NONE" --variant "$PICO"
  run $(at scores zero) --seeds=$S6 --variant "$NONE" --variant "$PICO"
  regime --seeds=$S6 --variant "$NONE" --variant "$PICO"
} > "$WORKDIR/B2.log" 2>&1 &
wait $A $!
STAGE=report "$0" "$WORKDIR"
