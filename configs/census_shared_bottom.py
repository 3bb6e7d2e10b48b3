"""census: shared_bottom backbone without contrast; see configs/census_common.py.

  python launch/train.py --config=configs/census_shared_bottom.py --config.data.path=DIR
"""

from configs import census_common


def get_config():
  return census_common.get_config(backbone="shared_bottom", pico=False)
