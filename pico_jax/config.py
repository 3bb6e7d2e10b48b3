"""Every config key's rule and the checks that relate keys.

The locked ``ConfigDict`` and absl's ``config_flags`` reject unknown override keys and
values that do not parse as the key's type; ``validate`` checks everything else and
names the offending key in one ``ConfigError`` (``pico_jax.config_keys``, with the
dotted-key access):

* ``RULES`` gives every leaf key of ``configs/default.py`` one rule from the small
  vocabulary of ``pico_jax.config_rules`` (``choices``, ``integer``, ``number``, ``ints``, ``numbers``,
  ``BOOL``, ``TEXT``): type and range. A key of the config without a rule is an error,
  so **adding a config key is two one-line changes: the key in configs/default.py and
  its rule in RULES** (tests/test_config.py fails until both exist). A list of choices
  is a tuple constant of the module that owns the key's meaning, imported here.
* ``validate`` then runs the cross-key checks, written out below (tau ordering, a
  store path, the synthetic splits' sizes, ...).
* ``pico_jax.train.config_checks.validate_against`` checks what needs the data or the
  devices (the eval split exists and has rows, the mesh divides the devices, the batch
  divides the mesh); it runs in ``pico_jax.train.trainer.build`` once the dataset is
  loaded, before any step.

``validate`` runs once per entry point, on the config it is given: the ``launch/``
scripts, ``experiments.run_grid`` on each run's config (the base with the grid's
settings), and a notebook or script before ``train_and_evaluate`` / ``trainer.build``.
The modules below trust a validated config, and ``train.restore`` the config a
checkpoint saved (validated when its run started). Nothing below this module imports
it (tests/test_architecture.py).
"""

from __future__ import annotations

import ml_collections

from pico_jax.config_keys import ConfigError, leaves
from pico_jax.config_rules import (ANY_NUMBER, BOOL, FRACTION, NON_NEGATIVE,
                                   NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, TEXT, Rule,
                                   choices, integer, ints, number, numbers)
from pico_jax.contrast import IMPLEMENTATIONS as CONTRAST_IMPLEMENTATIONS
from pico_jax.data import ORDERS, SOURCES, SYNTHETIC_KINDS
from pico_jax.data.positive_control import RELATEDNESS, SHARES
from pico_jax.losses import CVR_ROWS, TAU_GRADIENTS, TAU_SOURCES
from pico_jax.models.backbones import BACKBONES
from pico_jax.models.embeddings import POOLINGS
from pico_jax.models.heads import DETACH_SIDES, RELATEDNESS_INPUTS
from pico_jax.models.pico import COMPUTE_DTYPES, CONTRAST_MODES, CONTRAST_REPRESENTATIONS
from pico_jax.models.transfer import TRANSFERS
from pico_jax.parallel import DATA, MODEL
from pico_jax.train.config_checks import check_splits
from pico_jax.train.optimizer import OPTIMIZERS, SCHEDULES, learning_rate_schedule
from pico_jax.train.sparse_optimizer import EMBEDDING_OPTIMIZERS
from pico_jax.train.step import NEGATIVES


def _is_axis_rules(v) -> bool:
  axis = lambda a: a is None or a in (DATA, MODEL) or (
      isinstance(a, (tuple, list)) and all(x in (DATA, MODEL) for x in a))
  return isinstance(v, (tuple, list)) and all(
      isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str) and axis(r[1])
      for r in v)


MESH_AXIS = integer(1, or_=-1)  # -1: the devices the other axis leaves.
AXIS_RULES = Rule(_is_axis_rules, f"a tuple of (logical axis, None | {DATA!r} | {MODEL!r} | "
                  "a tuple of them) pairs")

# --- One rule per leaf key of configs/default.py. --------------------------------------

RULES: dict[str, Rule] = {
    "seed": NON_NEGATIVE_INT,
    "data.name": choices(SOURCES),
    "data.path": TEXT,
    "data.eval_split": TEXT,  # a split of the dataset: validate / validate_against.
    "data.prefetch": NON_NEGATIVE_INT,
    "data.device_prefetch": NON_NEGATIVE_INT,
    "data.num_threads": NON_NEGATIVE_INT,
    "data.allow_new_data": BOOL,
    "data.shuffle_window": NON_NEGATIVE_INT,
    "data.order": choices(ORDERS),
    "data.verify_shards": BOOL,
    "data.synthetic.num_rows": POSITIVE_INT,
    "data.synthetic.num_users": POSITIVE_INT,
    "data.synthetic.num_items": POSITIVE_INT,
    "data.synthetic.num_categories": POSITIVE_INT,
    "data.synthetic.rho": numbers(0, 1),
    "data.synthetic.latent_dim": POSITIVE_INT,
    "data.synthetic.signal": ANY_NUMBER,
    "data.synthetic.ctr_bias": ANY_NUMBER,
    "data.synthetic.cvr_bias": ANY_NUMBER,
    "data.synthetic.history_len": POSITIVE_INT,
    "data.synthetic.dense_noise": NON_NEGATIVE,
    "data.synthetic.val_fraction": FRACTION,
    "data.synthetic.test_fraction": FRACTION,
    "data.synthetic.kind": choices(SYNTHETIC_KINDS),
    "data.synthetic.seed": integer(0, or_=-1),  # -1: follow config.seed.
    "data.synthetic.positive_control.relatedness": choices(RELATEDNESS),
    "data.synthetic.positive_control.shares": choices(SHARES),
    "data.synthetic.positive_control.conversions_per_click": number(0, 1, low_open=True,
                                                                    high_open=True),
    "data.synthetic.positive_control.nuisance_scale": NON_NEGATIVE,
    "data.synthetic.positive_control.num_rows": POSITIVE_INT,
    "data.synthetic.positive_control.num_users": POSITIVE_INT,
    "data.synthetic.positive_control.num_items": POSITIVE_INT,
    "data.synthetic.positive_control.num_categories": POSITIVE_INT,
    "data.synthetic.positive_control.latent_dim": POSITIVE_INT,
    "data.synthetic.positive_control.signal": ANY_NUMBER,
    "data.synthetic.positive_control.ctr_bias": ANY_NUMBER,
    "data.synthetic.positive_control.val_fraction": FRACTION,
    "data.synthetic.positive_control.test_fraction": FRACTION,
    "model.embed_dim": POSITIVE_INT,
    "model.dense_dim": POSITIVE_INT,
    "model.pooling": choices(POOLINGS),
    "model.vocab_pad_multiple": POSITIVE_INT,
    "model.backbone": choices(BACKBONES),
    "model.shared_bottom.hidden": ints(),
    "model.mmoe.num_experts": POSITIVE_INT,
    "model.mmoe.expert_hidden": ints(non_empty=True),
    "model.ple.num_levels": POSITIVE_INT,
    "model.ple.num_shared_experts": POSITIVE_INT,
    "model.ple.num_task_experts": POSITIVE_INT,
    "model.ple.expert_hidden": ints(non_empty=True),
    "model.aitm.bottom_hidden": ints(non_empty=True),
    "model.tower_hidden": ints(),
    "model.layer_norm": BOOL,
    "model.dropout": FRACTION,
    "model.compute_dtype": choices(COMPUTE_DTYPES),
    "model.transfer": choices(TRANSFERS),
    "model.oracle_feature": BOOL,  # cross-key check: _check_data.
    "contrast.mode": choices(CONTRAST_MODES),
    "contrast.weight": NON_NEGATIVE,
    "contrast.proj_dim": POSITIVE_INT,
    "contrast.proj_hidden": ints(),
    "contrast.tau_min": POSITIVE,
    "contrast.tau_max": POSITIVE,
    "contrast.tau_init": POSITIVE,
    "contrast.relatedness_hidden": ints(),
    "contrast.relatedness_input": choices(RELATEDNESS_INPUTS),
    "contrast.relatedness_stop_gradient": BOOL,
    "contrast.symmetric": BOOL,
    "contrast.normalize": BOOL,
    "contrast.negatives": choices(NEGATIVES),
    "contrast.implementation": choices(CONTRAST_IMPLEMENTATIONS),
    "contrast.chunk_size": NON_NEGATIVE_INT,
    "contrast.relatedness_supervision_weight": NON_NEGATIVE,
    "contrast.tau_gradient": choices(TAU_GRADIENTS),
    "contrast.tau_source": choices(TAU_SOURCES),
    "contrast.tau_prior_weight": NON_NEGATIVE,
    "contrast.tau_prior": POSITIVE,
    "contrast.representation": choices(CONTRAST_REPRESENTATIONS),
    "contrast.detach": choices(DETACH_SIDES),
    "loss.ctr_weight": NON_NEGATIVE,
    "loss.ctcvr_weight": NON_NEGATIVE,
    "loss.cvr_weight": NON_NEGATIVE,
    "loss.cvr_rows": choices(CVR_ROWS),
    "loss.pos_weight.ctr": POSITIVE,
    "loss.pos_weight.ctcvr": POSITIVE,
    "loss.pos_weight.cvr": POSITIVE,
    "loss.calibrator_weight": NON_NEGATIVE,
    "optimizer.name": choices(OPTIMIZERS),
    "optimizer.learning_rate": POSITIVE,
    "optimizer.b1": FRACTION,
    "optimizer.b2": FRACTION,
    "optimizer.eps": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.grad_clip_norm": NON_NEGATIVE,  # 0: off.
    "optimizer.embedding_optimizer": choices(EMBEDDING_OPTIMIZERS),
    "optimizer.schedule": choices(SCHEDULES),
    "optimizer.warmup_steps": NON_NEGATIVE_INT,
    "optimizer.decay_steps": NON_NEGATIVE_INT,  # 0: train.steps.
    "train.batch_size": POSITIVE_INT,
    "train.steps": POSITIVE_INT,
    "train.log_every": POSITIVE_INT,
    "train.eval_every": POSITIVE_INT,
    "train.eval_batch_size": POSITIVE_INT,
    "train.early_stopping_metric": TEXT,  # '' (off) or a metric name.
    "train.patience": POSITIVE_INT,
    "train.baseline_scorings": BOOL,
    "checkpoint.enabled": BOOL,
    "checkpoint.every_steps": POSITIVE_INT,
    "checkpoint.keep": POSITIVE_INT,
    "checkpoint.best_metric": TEXT,  # '' or '<split>/<metric>': validate.
    "checkpoint.keep_best": NON_NEGATIVE_INT,
    "mesh.data": MESH_AXIS,
    "mesh.model": MESH_AXIS,
    "mesh.fsdp": BOOL,
    "axis_rules": AXIS_RULES,
}

# The choices of every key that has them, as the owning modules define them.
CHOICES = {key: rule.values for key, rule in RULES.items() if rule.values is not None}


def _show(value) -> str:
  return repr(tuple(value) if isinstance(value, list) else value)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ``ConfigError`` naming the first invalid key; returns ``config`` otherwise.

  Every leaf must have a rule in ``RULES`` and satisfy it; then the cross-key checks.
  """
  for key, value in leaves(config):
    rule = RULES.get(key)
    if rule is None:
      raise ConfigError(f"config.{key}: unknown key (every key needs a rule in "
                        "pico_jax/config.py RULES)")
    if not rule.ok(value):
      raise ConfigError(f"config.{key}={_show(value)}: expected {rule.expected}")
  _check_contrast(config.contrast)
  _check_optimizer(config)
  m = config.mesh
  if m.data == -1 and m.model == -1:
    raise ConfigError("config.mesh.data=-1 and config.mesh.model=-1: at most one may be -1")
  best = config.checkpoint.best_metric
  if best and (best.count("/") != 1 or not all(best.split("/"))):
    raise ConfigError(f"config.checkpoint.best_metric={best!r}: expected "
                      "'<split>/<metric>', e.g. 'val/ctr_auc', or '' for the default")
  _check_data(config)
  return config


def _check_contrast(c):
  if not c.tau_min < c.tau_max:
    raise ConfigError(f"config.contrast.tau_min={c.tau_min} and tau_max={c.tau_max}: "
                      "need 0 < tau_min < tau_max")
  # A learned tau starts at tau_init through an inverse sigmoid: strictly inside.
  learned = c.mode in ("global", "personalized")
  inside = (c.tau_min < c.tau_init < c.tau_max if learned
            else c.tau_min <= c.tau_init <= c.tau_max)
  if not inside:
    raise ConfigError(f"config.contrast.tau_init={c.tau_init}: must lie between "
                      f"tau_min={c.tau_min} and tau_max={c.tau_max}"
                      + (", strictly for a learned tau (e.g. contrast.tau_init=0.2)"
                         if learned else ""))
  if (learned and c.tau_gradient == "supervision"
      and not (c.relatedness_supervision_weight or c.tau_prior_weight)):
    raise ConfigError("config.contrast.tau_gradient='supervision': tau would never be "
                      "trained; set relatedness_supervision_weight or tau_prior_weight")
  if c.tau_source == "shuffled" and c.mode != "personalized":
    raise ConfigError(f"config.contrast.tau_source='shuffled' with contrast.mode={c.mode!r}: "
                      "only a per-instance (personalized) tau changes when permuted")
  if c.tau_source == "oracle" and c.mode == "none":
    raise ConfigError("config.contrast.tau_source='oracle' with contrast.mode='none': "
                      "there is no contrast to set a temperature for")


def _check_optimizer(config):
  o = config.optimizer
  if o.embedding_optimizer != "dense" and o.name == "adamw" and o.weight_decay:
    raise ConfigError(f"config.optimizer.embedding_optimizer={o.embedding_optimizer!r} has "
                      f"no weight decay; config.optimizer.name='adamw' with weight_decay="
                      f"{o.weight_decay} would decay the other params only")
  try:  # the schedule checks its own settings (warmup below decay) and names the key.
    learning_rate_schedule(o, config.train.steps)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def synthetic_split_rows(config) -> dict[str, int]:
  """The rows of each split the synthetic generator of ``config`` makes (as it cuts
  them: ``int(fraction * num_rows)`` for val and test, the rest for train)."""
  s = config.data.synthetic
  kind = s.get("kind", "default")
  g = s if kind == "default" else s[kind]  # another kind's settings: its own section.
  val, test = int(g.val_fraction * g.num_rows), int(g.test_fraction * g.num_rows)
  return {"train": g.num_rows - val - test, "val": val, "test": test}


def _check_data(config):
  if config.data.name == "store" and not config.data.path:
    raise ConfigError("config.data.path: required when config.data.name='store'")
  if config.data.path and config.data.name != "store":
    # A path alone would train on the synthetic data, its one sign a row count.
    raise ConfigError(f"config.data.path={config.data.path!r}: read only when "
                      f"config.data.name='store', and it is {config.data.name!r}; add "
                      "--config.data.name=store (or use a store recipe, e.g. "
                      "--config=configs/census.py)")
  positive_control = (config.data.name == "synthetic"
                      and config.data.synthetic.kind == "positive_control")
  for key, on in (("model.oracle_feature=True", config.model.oracle_feature),
                  ("contrast.tau_source='oracle'", config.contrast.tau_source == "oracle")):
    if on and not positive_control:  # the oracle columns exist in that test bed only.
      raise ConfigError(f"config.{key}: only the positive-control data (data.name="
                        "'synthetic', data.synthetic.kind='positive_control') provide the "
                        "oracle input")
  if config.data.name == "synthetic":
    s = config.data.synthetic
    kind = s.get("kind", "default")
    g, section = (s, "data.synthetic") if kind == "default" else (s[kind],
                                                                 f"data.synthetic.{kind}")
    if not g.val_fraction + g.test_fraction < 1:
      raise ConfigError(f"config.{section}.val_fraction={g.val_fraction} + test_fraction="
                        f"{g.test_fraction}: must be < 1 (the rest is train)")
    rows = synthetic_split_rows(config)
    check_splits(config, rows, f"config.{section}", {
        name: f"config.{section}.{name}_fraction={g[name + '_fraction']} ({rows[name]} of "
              f"num_rows={g.num_rows} rows)" for name in ("val", "test")})
