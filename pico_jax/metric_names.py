"""Which metrics a run shows, and where: one tuple per place, in the order shown.

Every metric computed lands in ``metrics.jsonl`` / ``train_metrics.jsonl`` and
TensorBoard by itself (eval metrics: ``pico_jax.metrics.task_metrics``; train metrics:
the step's, ``pico_jax.losses.pico_objective``). A tuple here decides only whether it
also shows in a log line, a plot, the experiment tables or their paired deltas, so
showing a metric somewhere is an edit of the tuple of that place. A name absent from a
run's records is skipped wherever it is listed.
"""

# The loop's train line, after the loss (means over the logging window, as the loss).
TRAIN_LOG = ("loss_ctr", "loss_ctcvr", "loss_contrast", "tau_mean")
# The loop's line after every evaluation of a split (GAUCs: data with groups).
EVAL_LOG = ("ctr_auc", "oracle_ctr_auc", "cvr_auc", "oracle_cvr_auc", "ctcvr_auc",
            "oracle_ctcvr_auc", "ctr_gauc", "cvr_gauc", "ctcvr_gauc", "ctr_eauc",
            "cvr_eauc", "ctcvr_eauc", "ctr_logloss", "cvr_logloss", "ctcvr_logloss")

# training_curves.png: one panel per train record key.
TRAIN_PLOT = ("loss", "loss_ctr", "loss_ctcvr", "loss_cvr", "loss_contrast",
              "loss_relatedness", "tau_mean", "examples_per_sec")
# eval_metrics.png, AUC panel: each with its ``oracle_<name>`` dashed where there is one.
AUC_PLOT = ("ctr_auc", "cvr_auc", "cvr_auc_all_rows", "ctcvr_auc")
# eval_metrics.png, logloss panel.
LOGLOSS_PLOT = ("ctr_logloss", "cvr_logloss", "ctcvr_logloss")
# reliability.png: the tasks with a reliability curve, each on its own rows (cvr: clicked
# rows; cvr_all_rows: every row, for independent tasks).
CALIBRATION_TASKS = ("ctr", "cvr", "cvr_all_rows", "ctcvr")

# launch/evaluate.py's table: a row per task (a metric's prefix; "cvr_all_rows" for the
# CVR tower on every row of independent tasks), a column per metric of a task (the
# suffix), each shown where the result has it.
SUMMARY_TASKS = ("ctr", "cvr", "cvr_all_rows", "ctcvr")
SUMMARY_COLUMNS = ("auc", "gauc", "eauc", "logloss", "pcoc", "ece")

# The experiment table's columns (``launch/experiment.py --columns`` replaces them).
TABLE_COLUMNS = ("ctr_auc", "cvr_auc", "cvr_auc_all_rows", "ctcvr_auc", "cvr_eauc",
                 "ctcvr_eauc", "oracle_ctr_auc", "oracle_cvr_auc", "oracle_ctcvr_auc",
                 "ctcvr_logloss", "ctr_pcoc", "cvr_pcoc", "ctcvr_pcoc", "tau_mean",
                 "tau_rho_spearman", "tau_r_spearman", "best_step")
# The experiment's paired ``delta_<name>`` against the baseline variant, and the eval
# split's ``val_<name>`` a selection between variants reads.
DELTAS = ("ctr_auc", "cvr_auc", "cvr_auc_all_rows", "ctcvr_auc", "mean_auc", "ctr_eauc",
          "cvr_eauc", "ctcvr_eauc", "mean_eauc")
