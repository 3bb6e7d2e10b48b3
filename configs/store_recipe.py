"""The shared shape of the store-backed recipes (census, aliexpress, aliccp).

Each recipe takes the backbone and whether PICO is on as its config-string argument:

  python launch/train.py --config=configs/census.py:backbone=ple,pico=false \
      --config.data.path=DIR

``backbone`` is one of shared_bottom | mmoe | ple (default mmoe), ``pico`` true | false
(default false); ``recipe_args`` parses them, then the recipe calls ``store_config``
with its sizes and schedule and sets what is particular to it (loss weights, pooling).
"""

from configs import default

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def recipe_args(arg: str | None, recipe: str) -> dict:
  """``"backbone=ple,pico=true"`` -> ``{"backbone": "ple", "pico": True}``; keys left
  out take their defaults (mmoe, PICO off: configs/default.py says why). Raises
  ValueError naming the recipe and the bad item."""
  args = {"backbone": "mmoe", "pico": False}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = (part.strip() for part in item.partition("="))
    if not sep or key not in args:
      raise ValueError(f"--config={recipe}:{arg}: {item!r} is not backbone=NAME or "
                       "pico=true|false")
    if key == "pico":
      if value.lower() not in _BOOLS:
        raise ValueError(f"--config={recipe}:{arg}: pico={value!r}, expected true or false")
      args[key] = _BOOLS[value.lower()]
    else:
      args[key] = value  # checked against the known backbones by pico_jax.config.
  return args


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
  if pico:  # PICO's recipe: fixed tau at lambda 0.1 (configs/default.py's contrast keys).
    c.contrast.mode = "fixed"
  else:
    c.contrast.mode = "none"
    c.contrast.weight = 0.0
  return c
