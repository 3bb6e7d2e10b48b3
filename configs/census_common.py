"""Census-Income W1 (DESIGN section 5) on a columnar store; the census_* recipes.

  python launch/preprocess.py --format census \
      --input ../shared/data/census-income-kdd/census-income.test.gz --output data/census
  python launch/train.py --config=configs/census_mmoe_pico.py --config.data.path=data/census

W1: embedding 16 per field, Shared-Bottom [64], MMoE 8 experts [64], PLE 4 shared + 4
task experts [64], towers [32], Adam 1e-3, batch 1024; 780 steps are about 10 epochs of
the 79,809 training rows, with a validation pass per epoch (78 steps).

The two census tasks are independent: income > 50K plays "click", never married plays
"conversion", and c = 1 does not imply y = 1 (the store records
info["task_relation"] = "independent"). So on census:
  - ctr_auc is the income AUC on all rows: comparable with other implementations;
  - the never-married AUC that other implementations report is auc(conversion, p_cvr)
    over ALL rows; cvr_auc as computed for entire-space data (clicked rows only) is the
    never-married AUC among the 6% of people with income > 50K, a different number;
  - ctcvr (p_ctr * p_cvr against income > 50K AND never married) is a joint event with
    no meaning for this benchmark.
The recipe therefore trains BCE on income and BCE on never-married, both on all rows
(loss.cvr_rows = "all"), and leaves the CTCVR term at weight 0; the metrics report the
never-married AUC on all rows for stores whose task_relation is "independent".
"""

from configs import default


def get_config(backbone: str = "mmoe", pico: bool = True):
  c = default.get_config()
  c.data.name = "store"
  c.data.path = ""  # required: --config.data.path=DIR
  c.model.backbone = backbone
  c.model.embed_dim = 16
  c.model.dense_dim = 16
  c.model.shared_bottom.hidden = (64,)
  c.model.mmoe.num_experts = 8
  c.model.mmoe.expert_hidden = (64,)
  c.model.ple.num_levels = 1
  c.model.ple.num_shared_experts = 4
  c.model.ple.num_task_experts = 4
  c.model.ple.expert_hidden = (64,)
  c.model.tower_hidden = (32,)
  c.loss.ctr_weight = 1.0
  c.loss.ctcvr_weight = 0.0
  c.loss.cvr_weight = 1.0
  c.loss.cvr_rows = "all"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 1024
  c.train.steps = 780
  c.train.log_every = 78
  c.train.eval_every = 78
  c.checkpoint.every_steps = 78
  if pico:
    c.contrast.mode = "personalized"
  else:
    c.contrast.mode = "none"
    c.contrast.weight = 0.0
  return c
