"""Ali-CCP on a columnar store (any of the three formats); the aliccp_* recipes.

  python launch/preprocess.py --format aliccp_aitm --input train=ctr_cvr.train \
      val=ctr_cvr.dev test=ctr_cvr.test --conversion-without-click drop --output data/aliccp
  python launch/train.py --config=configs/aliccp_mmoe_pico.py --config.data.path=data/aliccp

A starting point, not a published recipe: embedding 16, experts MLP [256, 128] (MMoE 8
experts; PLE 4 shared + 4 task experts; Shared-Bottom [256, 128]), towers [64, 32],
Adam 1e-3, batch 4096, ESMM losses (CTR and CTCVR on all rows); multi-valued fields of
the raw format are mean-pooled.
"""

from configs import default


def get_config(backbone: str = "mmoe", pico: bool = True):
  c = default.get_config()
  c.data.name = "store"
  c.data.path = ""  # required: --config.data.path=DIR
  c.model.backbone = backbone
  c.model.embed_dim = 16
  c.model.dense_dim = 16
  c.model.pooling = "mean"
  c.model.shared_bottom.hidden = (256, 128)
  c.model.mmoe.num_experts = 8
  c.model.mmoe.expert_hidden = (256, 128)
  c.model.ple.num_levels = 1
  c.model.ple.num_shared_experts = 4
  c.model.ple.num_task_experts = 4
  c.model.ple.expert_hidden = (256, 128)
  c.model.tower_hidden = (64, 32)
  c.loss.ctr_weight = 1.0
  c.loss.ctcvr_weight = 1.0
  c.loss.cvr_weight = 0.0
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 4096
  c.train.steps = 10_000
  c.train.log_every = 200
  c.train.eval_every = 2_000
  c.train.eval_batch_size = 16_384
  c.checkpoint.every_steps = 2_000
  if pico:
    c.contrast.mode = "personalized"
  else:
    c.contrast.mode = "none"
    c.contrast.weight = 0.0
  return c
