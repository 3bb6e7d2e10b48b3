"""aliexpress: shared_bottom backbone with PICO; see configs/aliexpress_common.py.

  python launch/train.py --config=configs/aliexpress_shared_bottom_pico.py --config.data.path=DIR
"""

from configs import aliexpress_common


def get_config():
  return aliexpress_common.get_config(backbone="shared_bottom", pico=True)
