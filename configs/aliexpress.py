"""AliExpress (MTReclib processed CSV) on a columnar store.

  python launch/preprocess.py --format=aliexpress --input=train.csv,test.csv \
      --output=data/aliexpress_nl
  python launch/train.py --config=configs/aliexpress.py:backbone=mmoe,pico=true \
      --config.data.path=data/aliexpress_nl

Model sizes follow W2 (docs/benchmarks.md): embedding 128, experts MLP [512, 256]
(MMoE 8 experts; PLE 4 shared + 4 task experts; Shared-Bottom [512, 256]), towers
[128, 64], Adam 1e-3, batch 2048; ESMM losses (CTR and CTCVR on all rows). Two inputs
give train and test; val is a seeded 10% of the train file.
"""

from configs.store_recipe import recipe_args, store_config


def get_config(arg: str | None = None):
  """``arg``: ``backbone=shared_bottom|mmoe|ple,pico=true|false`` (default mmoe, false)."""
  c = store_config(**recipe_args(arg, "configs/aliexpress.py"), embed_dim=128,
                   expert_hidden=(512, 256), tower_hidden=(128, 64), batch_size=2048,
                   steps=10_000, log_every=200, eval_every=2_000, eval_batch_size=8_192)
  c.loss.ctr_weight = 1.0
  c.loss.ctcvr_weight = 1.0
  c.loss.cvr_weight = 0.0
  return c
