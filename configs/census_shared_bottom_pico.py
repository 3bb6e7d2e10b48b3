"""census: shared_bottom backbone with PICO; see configs/census_common.py.

  python launch/train.py --config=configs/census_shared_bottom_pico.py --config.data.path=DIR
"""

from configs import census_common


def get_config():
  return census_common.get_config(backbone="shared_bottom", pico=True)
