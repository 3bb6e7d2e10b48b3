"""Where the tests find the real data samples: ``../shared/data`` beside the checkout,
or the directory named by ``PICO_JAX_DATA`` (a checkout elsewhere, e.g. a worktree)."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("PICO_JAX_DATA") or os.path.join(ROOT, "..", "shared", "data")
CENSUS = os.path.join(DATA, "census-income-kdd")
ALIEXPRESS = os.path.join(DATA, "aliexpress")
ALICCP = os.path.join(DATA, "ali-ccp")

needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"{DATA} absent")
