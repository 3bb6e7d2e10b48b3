"""aliexpress: ple backbone with PICO; see configs/aliexpress_common.py.

  python launch/train.py --config=configs/aliexpress_ple_pico.py --config.data.path=DIR
"""

from configs import aliexpress_common


def get_config():
  return aliexpress_common.get_config(backbone="ple", pico=True)
