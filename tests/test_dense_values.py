"""Dense values on every valid input: constant columns, huge magnitudes, float32's range.

Rows are the issue's ``row(x)``: an AliExpress line whose first numerical column
(``numerical_1``, column 18) is ``x`` and every other column 0, under the standard
header; three inputs are train, val and test.
"""

import numpy as np
import pytest

from pico_jax import batch as B
from pico_jax.data import store
from pico_jax.data.errors import DataError
from pico_jax.ingest import numeric_csv, preprocess

HEADER = ",".join(numeric_csv.aliexpress().columns)
X_COLUMN = 18  # numerical_1, 1-based.


def row(x: str) -> str:
  return "1," + "0," * 16 + x + ",0" * 62 + ",0,0"


def write(path, values) -> str:
  path.write_text("\n".join([HEADER] + [row(v) for v in values]) + "\n")
  return str(path)


def build(tmp_path, train, val, test, **options):
  tmp_path.mkdir(exist_ok=True)
  inputs = [write(tmp_path / f"{split}.csv", values)
            for split, values in (("train", train), ("val", val), ("test", test))]
  out = str(tmp_path / "store")
  meta = preprocess.build_store("aliexpress", inputs, out,
                                options=preprocess.Options(workers=1, **options))
  ds = store.load_store(out)
  return meta, {split: np.asarray(ds.splits[split][B.DENSE][:, 0])
                for split in store.SPLITS}


@pytest.mark.parametrize("value", ["0.1", "0.7", repr(1 / 3), "0", "-2.5e300"])
def test_a_constant_column_gets_std_1_and_is_stored_as_0(tmp_path, value):
  """Its float64 mean is off by a rounding (0.10000000000000002 for 0.1), its std a
  rounding (1.4e-17): a relative tolerance, not std > 0, tells it constant."""
  meta, dense = build(tmp_path, [value] * 3, [value], ["0.2"])
  assert meta["dense_stats"]["std"][0] == 1.0
  assert meta["dense_constant"][0] == "numerical_1"
  for split in store.SPLITS:
    np.testing.assert_array_equal(dense[split], 0.0, err_msg=split)


def test_a_nearly_constant_column_is_still_standardized(tmp_path):
  meta, dense = build(tmp_path, ["1", "1.000000001"], ["1"], ["1.000000001"])
  np.testing.assert_allclose(meta["dense_stats"]["std"][0], 5e-10, rtol=1e-6)
  np.testing.assert_allclose(dense["train"], [-1, 1], rtol=1e-6)
  assert "numerical_1" not in meta["dense_constant"]


def test_moments_do_not_overflow_for_any_finite_value(tmp_path):
  """1e200 squared overflows float64: the moments are taken in scaled units."""
  meta, dense = build(tmp_path, ["1e200", "0", "1"], ["0"], ["1e200"])
  want_mean, want_std = 1e200 / 3, np.sqrt(2) / 3 * 1e200
  np.testing.assert_allclose(meta["dense_stats"]["mean"][0], want_mean, rtol=1e-12)
  np.testing.assert_allclose(meta["dense_stats"]["std"][0], want_std, rtol=1e-12)
  np.testing.assert_allclose(dense["train"], [np.sqrt(2), -1 / np.sqrt(2),
                                              -1 / np.sqrt(2)], rtol=1e-6)
  np.testing.assert_allclose(dense["test"], [np.sqrt(2)], rtol=1e-6)
  meta, dense = build(tmp_path / "max", ["1.7e308", "-1.7e308"], ["0"], ["1"])
  np.testing.assert_allclose(meta["dense_stats"]["std"][0], 1.7e308, rtol=1e-12)
  np.testing.assert_allclose(dense["train"], [1, -1], rtol=1e-6)


def test_small_values_keep_their_moments(tmp_path):
  meta, _ = build(tmp_path, ["1e-300", "3e-300"], ["0"], ["0"])
  np.testing.assert_allclose(meta["dense_stats"]["mean"][0], 2e-300, rtol=1e-12)
  np.testing.assert_allclose(meta["dense_stats"]["std"][0], 1e-300, rtol=1e-12)


@pytest.mark.parametrize("train,test,options", [
    (["0", "1"], "1e39", {"dense_transform": "none"}),  # beyond float32 as is.
    (["1", "1.000000001"], "1e30", {}),  # 2e39 once standardized.
])
def test_a_value_float32_cannot_hold_is_a_located_error(tmp_path, train, test, options):
  with pytest.raises(DataError) as e:
    build(tmp_path, train, ["0"], ["0", test], **options)
  assert e.value.path.endswith("test.csv")
  assert (e.value.line, e.value.column) == (3, X_COLUMN)
  assert e.value.column_name == "numerical_1"
  assert "float32" in str(e.value)
  assert not (tmp_path / "store").exists()
