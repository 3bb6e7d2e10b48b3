"""The shared shape of the store-backed recipes (census_*, aliexpress_*, aliccp_*).

Each dataset's ``*_common.py`` calls ``store_config`` with its sizes and schedule, then
sets what is particular to it (loss weights, pooling).
"""

from configs import default


def store_config(*, backbone: str, pico: bool, embed_dim: int, expert_hidden: tuple,
                 tower_hidden: tuple, batch_size: int, steps: int, log_every: int,
                 eval_every: int, eval_batch_size: int = 4_096):
  """default.get_config() on a columnar store (``--config.data.path=DIR``, required).

  ``expert_hidden`` is the MLP of every expert (MMoE 8 experts, PLE 1 level of 4 shared
  + 4 task experts) and of the Shared-Bottom; checkpoints are written at each eval.
  """
  c = default.get_config()
  c.data.name = "store"
  c.data.path = ""
  c.model.backbone = backbone
  c.model.embed_dim = embed_dim
  c.model.dense_dim = embed_dim
  c.model.shared_bottom.hidden = expert_hidden
  c.model.mmoe.num_experts = 8
  c.model.mmoe.expert_hidden = expert_hidden
  c.model.ple.num_levels = 1
  c.model.ple.num_shared_experts = 4
  c.model.ple.num_task_experts = 4
  c.model.ple.expert_hidden = expert_hidden
  c.model.tower_hidden = tower_hidden
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = batch_size
  c.train.steps = steps
  c.train.log_every = log_every
  c.train.eval_every = eval_every
  c.train.eval_batch_size = eval_batch_size
  c.checkpoint.every_steps = eval_every
  if pico:
    c.contrast.mode = "personalized"
  else:
    c.contrast.mode = "none"
    c.contrast.weight = 0.0
  return c
