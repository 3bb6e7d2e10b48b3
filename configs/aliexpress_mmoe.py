"""aliexpress: mmoe backbone without contrast; see configs/aliexpress_common.py.

  python launch/train.py --config=configs/aliexpress_mmoe.py --config.data.path=DIR
"""

from configs import aliexpress_common


def get_config():
  return aliexpress_common.get_config(backbone="mmoe", pico=False)
