"""AliExpress (MTReclib processed CSV) on a columnar store; the aliexpress_* recipes.

  python launch/preprocess.py --format aliexpress --input train.csv test.csv \
      --output data/aliexpress_nl
  python launch/train.py --config=configs/aliexpress_mmoe_pico.py \
      --config.data.path=data/aliexpress_nl

Model sizes follow W2 (DESIGN section 5): embedding 128, experts MLP [512, 256]
(MMoE 8 experts; PLE 4 shared + 4 task experts; Shared-Bottom [512, 256]), towers
[128, 64], Adam 1e-3, batch 2048; ESMM losses (CTR and CTCVR on all rows). Two inputs
give train and test; val is a seeded 10% of the train file.
"""

from configs import default


def get_config(backbone: str = "mmoe", pico: bool = True):
  c = default.get_config()
  c.data.name = "store"
  c.data.path = ""  # required: --config.data.path=DIR
  c.model.backbone = backbone
  c.model.embed_dim = 128
  c.model.dense_dim = 128
  c.model.shared_bottom.hidden = (512, 256)
  c.model.mmoe.num_experts = 8
  c.model.mmoe.expert_hidden = (512, 256)
  c.model.ple.num_levels = 1
  c.model.ple.num_shared_experts = 4
  c.model.ple.num_task_experts = 4
  c.model.ple.expert_hidden = (512, 256)
  c.model.tower_hidden = (128, 64)
  c.loss.ctr_weight = 1.0
  c.loss.ctcvr_weight = 1.0
  c.loss.cvr_weight = 0.0
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 2048
  c.train.steps = 10_000
  c.train.log_every = 200
  c.train.eval_every = 2_000
  c.train.eval_batch_size = 8_192
  c.checkpoint.every_steps = 2_000
  if pico:
    c.contrast.mode = "personalized"
  else:
    c.contrast.mode = "none"
    c.contrast.weight = 0.0
  return c
