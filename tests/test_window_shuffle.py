"""window_shuffle: Grain's window shuffle, element for element and state for state."""

import grain
import pytest

from pico_jax.data import window_shuffle

# (window_size, elements, seed): windows of 1, partial last windows, one window of
# every element, the cipher block past its 16-bit minimum (70,000 > 2^16), 32-bit seeds.
CASES = [(1, 10, 0), (2, 9, 3), (4, 37, 7), (5, 5, 11), (64, 300, 2**31 - 5),
         (1000, 2500, 1), (70_000, 70_003, 9)]


def _pair(window_size, elements, seed):
  source = grain.MapDataset.range(elements).to_iter_dataset()
  return (iter(grain.experimental.WindowShuffleIterDataset(
              source, window_size=window_size, seed=seed)),
          iter(window_shuffle.WindowShuffleIterDataset(
              source, window_size=window_size, seed=seed)))


def _drain(it):
  out = []
  for element in it:
    out.append((element, it.get_state()))
  return out


@pytest.mark.parametrize("window_size,elements,seed", CASES)
def test_same_elements_and_states_as_grain(window_size, elements, seed):
  theirs, ours = _pair(window_size, elements, seed)
  assert ours.get_state() == theirs.get_state()
  expected = _drain(theirs)
  assert _drain(ours) == expected
  assert sorted(e for e, _ in expected) == list(range(elements))


@pytest.mark.parametrize("window_size,elements,seed", CASES[:6])
def test_resume_from_either_state(window_size, elements, seed):
  """A state taken anywhere (mid-window, a window's end) by either implementation
  resumes the other on the same remaining elements."""
  theirs, _ = _pair(window_size, elements, seed)
  steps = _drain(theirs)
  for k in sorted({0, 1, window_size - 1, window_size, elements // 2, elements - 1}):
    if not 0 <= k < elements:
      continue
    state = steps[k][1]
    rest = [e for e, _ in steps[k + 1:]]
    for resumed in _pair(window_size, elements, seed):
      resumed.set_state(state)
      assert [e for e in resumed] == rest


def test_window_order_is_a_permutation_for_small_windows():
  for n in (0, 1, 2, 3, 4, 17):
    assert sorted(window_shuffle.window_order(n, 123).tolist()) == list(range(n))
