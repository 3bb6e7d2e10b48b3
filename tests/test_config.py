"""Config loading: overrides, unknown keys, wrong types and invalid values fail at start."""

import os
import pytest
from absl import flags
from ml_collections import config_flags

from conftest import ROOT
from conftest import small_config
from pico_jax import config as config_lib
from pico_jax.config import validate
from pico_jax.config_keys import ConfigError, leaves
from pico_jax.train.config_checks import validate_against

DEFAULT = os.path.join(ROOT, "configs", "default.py")


def parse(*overrides):
  argv = ["train.py", f"--config={DEFAULT}", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", DEFAULT, flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def test_overrides_apply():
  c = parse("--config.model.backbone=ple", "--config.train.steps=200",
            "--config.model.tower_hidden=(16,8)")
  assert (c.model.backbone, c.train.steps, tuple(c.model.tower_hidden)) == ("ple", 200, (16, 8))
  validate(c)


def test_unknown_key_names_the_key():
  with pytest.raises(Exception, match="stepz"):
    parse("--config.train.stepz=5")


def test_wrong_type_names_the_key():
  with pytest.raises(Exception, match="train.steps"):
    parse("--config.train.steps=many")


@pytest.mark.parametrize("key,value,match", [
    ("model.backbone", "'moe'", "config.model.backbone"),
    ("contrast.mode", "'always'", "config.contrast.mode"),
    ("train.batch_size", "0", "config.train.batch_size"),
    ("contrast.tau_min", "2.0", "config.contrast.tau_min"),
    ("contrast.tau_init", "1.5", "config.contrast.tau_init"),  # above tau_max = 1.
    ("contrast.weight", "-1.0", "config.contrast.weight"),
])
def test_invalid_values_name_the_key(key, value, match):
  with pytest.raises(ConfigError, match=match):
    validate(parse(f"--config.{key}={value}"))


def test_every_key_of_the_default_config_has_a_rule():
  """A key added to configs/default.py without its rule in config.RULES fails here."""
  from configs import default
  keys = [key for key, _ in leaves(default.get_config())]
  assert [k for k in keys if k not in config_lib.RULES] == []
  assert validate(default.get_config())  # every default value passes its rule.


def test_a_key_without_a_rule_is_rejected():
  c = small_config()
  c.unlock()
  c.train.foo = 1
  with pytest.raises(ConfigError, match=r"config\.train\.foo: unknown key"):
    validate(c)


def test_choices_are_the_owning_modules_lists():
  from pico_jax.data import SOURCES
  from pico_jax.losses import CVR_ROWS
  from pico_jax.models.embeddings import POOLINGS
  from pico_jax.models.pico import COMPUTE_DTYPES
  from pico_jax.train.optimizer import OPTIMIZERS
  from pico_jax.train.sparse_optimizer import EMBEDDING_OPTIMIZERS
  from pico_jax.train.step import NEGATIVES
  owned = {"data.name": SOURCES, "model.pooling": POOLINGS, "loss.cvr_rows": CVR_ROWS,
           "model.compute_dtype": COMPUTE_DTYPES, "contrast.negatives": NEGATIVES,
           "optimizer.name": OPTIMIZERS, "optimizer.embedding_optimizer": EMBEDDING_OPTIMIZERS}
  for key, values in owned.items():
    assert config_lib.CHOICES[key] is values, key


# Every repro of issue 19, a bad value of every rule kind and every cross-key check:
# (overrides of conftest.small_config, what the one-line message must say).
BAD = [
    # issue 19's repros
    ({"model.tower_hidden": ("abc",)}, r"config\.model\.tower_hidden=\('abc',\): expected a tuple "
     r"of integers >= 1"),
    ({"model.mmoe.num_experts": 0}, r"config\.model\.mmoe\.num_experts=0: expected an integer >= 1"),
    ({"data.eval_split": "dev"}, r"config\.data\.eval_split='dev': config\.data\.synthetic has "
     r"splits \['test', 'train', 'val'\]"),
    ({"model.backbone": "ple", "model.ple.num_shared_experts": 0},
     r"config\.model\.ple\.num_shared_experts=0: expected an integer >= 1"),
    ({"data.synthetic.num_users": 0}, r"config\.data\.synthetic\.num_users=0"),
    ({"optimizer.b1": 1.5}, r"config\.optimizer\.b1=1\.5: expected a number in \[0, 1\)"),
    ({"optimizer.b2": 1.0}, r"config\.optimizer\.b2=1\.0: expected a number in \[0, 1\)"),
    ({"model.ple.num_levels": 0}, r"config\.model\.ple\.num_levels=0"),
    # one bad value per rule kind
    ({"model.pooling": "max"}, r"config\.model\.pooling='max': expected one of \['sum', 'mean'\]"),
    ({"checkpoint.keep_best": -1}, r"config\.checkpoint\.keep_best=-1: expected an integer >= 0"),
    ({"optimizer.learning_rate": 0.0}, r"config\.optimizer\.learning_rate=0\.0: expected a "
     r"number > 0"),
    ({"loss.ctr_weight": -0.5}, r"config\.loss\.ctr_weight=-0\.5: expected a number >= 0"),
    ({"data.synthetic.signal": float("nan")}, r"config\.data\.synthetic\.signal=nan: expected a "
     r"finite number"),
    ({"model.dropout": 1.0}, r"config\.model\.dropout=1\.0"),
    ({"model.tower_hidden": (8, 0)}, r"config\.model\.tower_hidden=\(8, 0\)"),
    ({"model.mmoe.expert_hidden": ()}, r"config\.model\.mmoe\.expert_hidden=\(\): expected a "
     r"non-empty tuple"),
    ({"data.synthetic.rho": (0.5, 1.5)}, r"config\.data\.synthetic\.rho=\(0\.5, 1\.5\): expected "
     r"a non-empty tuple of numbers in \[0, 1\]"),
    ({"mesh.data": 0}, r"config\.mesh\.data=0: expected an integer >= 1, or -1"),
    ({"axis_rules": (("vocab", "rows"),)}, r"config\.axis_rules=.*: expected a tuple of \(logical "
     r"axis"),
    ({"seed": -1}, r"config\.seed=-1"),
    # cross-key checks
    ({"data.synthetic.val_fraction": 0.5, "data.synthetic.test_fraction": 0.5},
     r"val_fraction=0\.5 \+ test_fraction=0\.5: must be < 1"),
    ({"data.synthetic.val_fraction": 0.0}, r"config\.data\.synthetic\.val_fraction=0\.0 \(0 of "
     r"num_rows=8000 rows\): the 'val' split has no rows, and config\.data\.eval_split='val' "
     r"evaluates it"),
    # Empty splits are refused before training (issue 26 row 5: it crashed at the end).
    ({"data.synthetic.test_fraction": 0.0}, r"config\.data\.synthetic\.test_fraction=0\.0 "
     r"\(0 of num_rows=8000 rows\): the 'test' split has no rows, and the final test "
     r"evaluates it"),
    ({"data.synthetic.val_fraction": 0.0001}, r"val_fraction=0\.0001 \(0 of num_rows=8000"),
    ({"data.synthetic.positive_control.test_fraction": 0.0,
      "data.synthetic.kind": "positive_control"},
     r"config\.data\.synthetic\.positive_control\.test_fraction=0\.0 \(0 of"),
    ({"train.batch_size": 10_000}, r"config\.train\.batch_size=10000: more than the 6400 rows"),
    ({"mesh.data": -1, "mesh.model": -1}, r"at most one may be -1"),
    ({"checkpoint.best_metric": "dev/mean_auc"}, r"config\.checkpoint\.best_metric='dev/mean_auc'"),
    ({"checkpoint.best_metric": "mean_auc"}, r"expected '<split>/<metric>'"),
    ({"contrast.tau_min": 2.0}, r"config\.contrast\.tau_min"),
]


@pytest.mark.parametrize("overrides,match", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_give_one_error_naming_the_key(overrides, match):
  with pytest.raises(ConfigError, match=match) as error:
    validate(small_config(**overrides))
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("rule,bad", [
    ("train.steps", 1.5), ("train.steps", True), ("model.layer_norm", 1),
    ("data.path", 3), ("optimizer.b1", "0.9"), ("model.tower_hidden", 32),
])
def test_rules_check_the_type(rule, bad):
  """Values that bypass the flags' parsing (a grid's values, a set_value) are typed too."""
  assert not config_lib.RULES[rule].ok(bad)


@pytest.mark.parametrize("overrides,splits,devices,match", [
    ({"mesh.model": 2}, None, 1, r"config\.mesh\.model=2: does not divide the 1 devices"),
    ({"mesh.model": 3}, None, 8, r"config\.mesh\.model=3: does not divide the 8 devices"),
    ({"mesh.data": 2, "mesh.model": 2}, None, 8, r"4 devices, but there are 8"),
    ({"train.batch_size": 60}, None, 8, r"config\.train\.batch_size=60: not divisible by the "
     r"mesh's data axis \(8 devices\)"),
    ({"mesh.model": 2, "train.eval_batch_size": 510}, None, 8, r"eval_batch_size=510"),
    ({"data.name": "store", "data.path": "/s", "data.eval_split": "dev"},
     {"train": 100, "val": 10}, None, r"config\.data\.eval_split='dev': the store /s has "
     r"splits \['train', 'val'\]"),
    ({}, {"train": 100, "val": 0, "test": 5}, None, r"the dataset: the 'val' split has no "
     r"rows, and config\.data\.eval_split='val' evaluates it"),
    ({"data.name": "store", "data.path": "/s"}, {"train": 100, "val": 5, "test": 0}, None,
     r"the store /s: the 'test' split has no rows, and the final test evaluates it"),
    # Time order exists only for a streamed (sharded) store: not a silent global shuffle.
    ({"data.order": "time", "data.name": "store", "data.path": "/s"},
     {"train": 100, "val": 5, "test": 5}, None, r"config\.data\.order='time': only a "
     r"sharded store .* the store /s is shuffled over all rows every epoch"),
])
def test_checks_against_the_data_and_devices(overrides, splits, devices, match):
  config = validate(small_config(**overrides)) if "data.path" not in overrides else (
      small_config(**overrides))
  with pytest.raises(ConfigError, match=match):
    validate_against(config, splits, devices)
  validate_against(small_config(), {"train": 6400, "val": 800, "test": 800}, 8)
  validate_against(small_config(**{"data.order": "time"}),
                   {"train": 6400, "val": 800, "test": 800}, 8, streamed=True)


def test_build_checks_the_mesh_before_anything_trains():
  from pico_jax.train.trainer import build
  with pytest.raises(ConfigError, match=r"config\.mesh\.model=3: does not divide the 8"):
    build(small_config(**{"mesh.model": 3}))


RECIPES = ("census", "aliexpress", "aliccp")


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("backbone", ["shared_bottom", "mmoe", "ple"])
@pytest.mark.parametrize("pico", [True, False])
def test_recipes_take_backbone_and_pico_as_their_argument(recipe, backbone, pico):
  fv = flags.FlagValues()
  path = os.path.join(ROOT, "configs", f"{recipe}.py")
  argv = ["train.py", f"--config={path}:backbone={backbone},pico={str(pico).lower()}",
          "--config.data.path=/some/store"]
  config_flags.DEFINE_config_file("config", path, flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  config = validate(fv.config)
  assert config.data.name == "store" and config.model.backbone == backbone
  assert (config.contrast.mode == "fixed") == pico  # the shipped variant (RESULTS.md 4).
  if recipe == "census":  # W1 (docs/benchmarks.md).
    assert (config.model.embed_dim, config.train.batch_size) == (16, 1024)
    assert tuple(config.model.tower_hidden) == (32,)
    assert config.optimizer.learning_rate == 1e-3


def test_recipe_defaults_and_bad_arguments():
  from configs import census
  config = census.get_config()
  # PICO is opt-in (RESULTS.md section 8): pico=true is its recipe, fixed tau 1.0 at 0.1.
  assert (config.model.backbone, config.contrast.mode) == ("mmoe", "none")
  pico = census.get_config("pico=true").contrast
  assert (pico.mode, pico.weight, pico.tau_init) == ("fixed", 0.1, 1.0)
  with pytest.raises(ConfigError, match="config.data.path"):
    validate(config)  # a store recipe needs --config.data.path.
  with pytest.raises(ValueError, match=r"configs/census.py:pico=maybe: pico='maybe'"):
    census.get_config("pico=maybe")
  with pytest.raises(ValueError, match="'backbon=ple' is not backbone=NAME"):
    census.get_config("backbon=ple")
  with pytest.raises(ConfigError, match="config.model.backbone='moe'"):
    validate(census.get_config("backbone=moe"))


def test_a_data_path_without_the_store_source_is_an_error():
  """data.path alone would train on the synthetic data, saying so only in a row count."""
  with pytest.raises(ConfigError, match=r"config.data.path='data/mine': read only when "
                     r"config.data.name='store', and it is 'synthetic'; add "
                     r"--config.data.name=store"):
    validate(small_config(**{"data.path": "data/mine"}))


def test_a_saved_config_is_laid_over_todays_defaults(caplog):
  """An older run's checkpoint still evaluates: added keys take their defaults, removed
  keys are dropped with a warning."""
  import json
  from configs import census
  from pico_jax.train.restore import saved_run_config
  saved = json.loads(json.dumps(census.get_config("backbone=ple,pico=false").to_dict()))
  saved["checkpoint"]["best_mode"] = "max"  # a key that no longer exists.
  del saved["data"]["device_prefetch"]  # a key added since.
  config = saved_run_config(saved)
  assert (config.model.backbone, config.contrast.mode) == ("ple", "none")
  assert tuple(config.model.tower_hidden) == (32,) and config.data.device_prefetch == 0
  assert "checkpoint.best_mode" in caplog.text


def test_the_default_recipe_has_no_contrast_and_pico_is_section_6s_selection():
  """RESULTS.md section 8's rule: no contrast by default; mode=fixed is PICO's recipe."""
  from configs import default
  c = default.get_config()
  assert (c.contrast.mode, c.contrast.weight, c.contrast.tau_init) == ("none", 0.1, 1.0)
  c.contrast.mode = "fixed"
  assert validate(c)
  # A learned tau cannot start at tau_max: the check names the key and a way out.
  c.contrast.mode = "personalized"
  with pytest.raises(ConfigError, match=r"contrast.tau_init=1.0: .*e\.g\. contrast.tau_init=0.2"):
    validate(c)
  c.contrast.tau_init = 0.2
  assert validate(c)
