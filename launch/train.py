"""Train a model: python launch/train.py --config=configs/default.py --workdir=DIR.

Any config value can be overridden: --config.model.backbone=ple --config.train.steps=200.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/default", "Output directory.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", force=True)
  logging.getLogger("pico_jax").setLevel(logging.INFO)
  from pico_jax.config import ConfigError, validate
  try:
    validate(_CONFIG.value)
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  from pico_jax.train.loop import train_and_evaluate
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
