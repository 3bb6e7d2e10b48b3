"""aliccp: mmoe backbone without contrast; see configs/aliccp_common.py.

  python launch/train.py --config=configs/aliccp_mmoe.py --config.data.path=DIR
"""

from configs import aliccp_common


def get_config():
  return aliccp_common.get_config(backbone="mmoe", pico=False)
