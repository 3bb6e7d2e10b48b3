"""Census-Income W1 (docs/benchmarks.md) on a columnar store.

  python launch/preprocess.py --format census \
      --input census-income.test.gz --output data/census
  python launch/train.py --config=configs/census.py:backbone=mmoe,pico=true \
      --config.data.path=data/census

The backbone (shared_bottom | mmoe | ple) and PICO (true | false) are the config-string
argument (``configs/store_recipe.py``).

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

from configs.store_recipe import recipe_args, store_config


def get_config(arg: str | None = None):
  """``arg``: ``backbone=shared_bottom|mmoe|ple,pico=true|false`` (default mmoe, false)."""
  c = store_config(**recipe_args(arg, "configs/census.py"), embed_dim=16, expert_hidden=(64,),
                   tower_hidden=(32,), batch_size=1024, steps=780, log_every=78,
                   eval_every=78)
  c.loss.ctr_weight = 1.0
  c.loss.ctcvr_weight = 0.0
  c.loss.cvr_weight = 1.0
  c.loss.cvr_rows = "all"
  return c
