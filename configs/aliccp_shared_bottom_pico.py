"""aliccp: shared_bottom backbone with PICO; see configs/aliccp_common.py.

  python launch/train.py --config=configs/aliccp_shared_bottom_pico.py --config.data.path=DIR
"""

from configs import aliccp_common


def get_config():
  return aliccp_common.get_config(backbone="shared_bottom", pico=True)
