"""Config loading: overrides, unknown keys, wrong types and invalid values fail at start."""

import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from conftest import ROOT
from pico_jax.config import ConfigError, validate

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
    ("contrast.tau_init", "1.0", "config.contrast.tau_init"),
    ("contrast.weight", "-1.0", "config.contrast.weight"),
])
def test_invalid_values_name_the_key(key, value, match):
  with pytest.raises(ConfigError, match=match):
    validate(parse(f"--config.{key}={value}"))


def test_cli_rejects_unknown_key_before_training(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "train.py"), f"--workdir={tmp_path}",
       "--config.model.backbon=mmoe"], capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert proc.returncode != 0
  assert "backbon" in proc.stderr
  assert not os.listdir(tmp_path)


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
  assert (config.contrast.mode == "personalized") == pico
  if recipe == "census":  # W1 (docs/benchmarks.md).
    assert (config.model.embed_dim, config.train.batch_size) == (16, 1024)
    assert tuple(config.model.tower_hidden) == (32,)
    assert config.optimizer.learning_rate == 1e-3


def test_recipe_defaults_and_bad_arguments():
  from configs import census
  config = census.get_config()
  assert (config.model.backbone, config.contrast.mode) == ("mmoe", "personalized")
  with pytest.raises(ConfigError, match="config.data.path"):
    validate(config)  # a store recipe needs --config.data.path.
  with pytest.raises(ValueError, match=r"configs/census.py:pico=maybe: pico='maybe'"):
    census.get_config("pico=maybe")
  with pytest.raises(ValueError, match="'backbon=ple' is not backbone=NAME"):
    census.get_config("backbon=ple")
  with pytest.raises(ConfigError, match="config.model.backbone='moe'"):
    validate(census.get_config("backbone=moe"))


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
