"""Ali-CCP on a columnar store (any of the three formats).

  python launch/preprocess.py --format=aliccp_aitm --output=data/aliccp \
      --input=train=ctr_cvr.train,val=ctr_cvr.dev,test=ctr_cvr.test \
      --conversion_without_click=drop
  python launch/train.py --config=configs/aliccp.py:backbone=mmoe,pico=true \
      --config.data.path=data/aliccp

A starting point, not a published recipe: embedding 16, experts MLP [256, 128] (MMoE 8
experts; PLE 4 shared + 4 task experts; Shared-Bottom [256, 128]), towers [64, 32],
Adam 1e-3, batch 4096, ESMM losses (CTR and CTCVR on all rows); multi-valued fields of
the raw format are mean-pooled.
"""

from configs.store_recipe import recipe_args, store_config


def get_config(arg: str | None = None):
  """``arg``: ``backbone=shared_bottom|mmoe|ple,pico=true|false`` (default mmoe, false)."""
  c = store_config(**recipe_args(arg, "configs/aliccp.py"), embed_dim=16,
                   expert_hidden=(256, 128), tower_hidden=(64, 32), batch_size=4096,
                   steps=10_000, log_every=200, eval_every=2_000, eval_batch_size=16_384)
  c.model.pooling = "mean"
  c.loss.ctr_weight = 1.0
  c.loss.ctcvr_weight = 1.0
  c.loss.cvr_weight = 0.0
  return c
