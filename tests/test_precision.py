"""Mixed precision: with ``model.compute_dtype=bfloat16`` the train step's matmuls are
bfloat16; the contrastive similarity stays float32 by design (docs/method.md).

The program checked is the StableHLO that the jitted train step lowers to, i.e. what
the step asks XLA to compute. The CPU backend then rewrites bfloat16 dots to float32
(it has no bfloat16 matmul), so the CPU-compiled HLO would not show the choice; GPU and
TPU backends keep it.
"""

import re

import jax
import numpy as np
import pytest

from conftest import small_config
from pico_jax import parallel
from pico_jax.train.trainer import build

# stablehlo.dot_general ... precision = [P, P] : (tensor<AxBxT>, tensor<CxDxT>) -> tensor<..xT>
_DOT = re.compile(r"stablehlo\.dot_general .*precision = \[(\w+), \w+\].*"
                  r": \(tensor<([\dx]*)x(\w+)>, tensor<([\dx]*)x(\w+)>\) -> tensor<[\dx]*x(\w+)>")


def _dots(compute_dtype):
  """(dot_general ops of the lowered train step as (precision, lhs shape, lhs dtype,
  rhs shape, rhs dtype, result dtype), the float32 param kernels' shapes)."""
  config = small_config(**{"model.compute_dtype": compute_dtype})
  trainer = build(config, mesh=parallel.make_mesh(1, 1, jax.devices()[:1]))
  state = trainer.state
  text = trainer.train_step.lower(state, next(trainer.batches())).as_text()
  dots = [m.groups() for m in map(_DOT.search, text.splitlines()) if m]
  assert len(dots) == text.count("stablehlo.dot_general")  # the pattern read every one.
  kernels = {"/".join(k.key for k in path): leaf.shape
             for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]
             if path[-1].key == "kernel"}
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
  return dots, kernels


def _shape(text):
  return tuple(int(d) for d in text.split("x"))


@pytest.mark.parametrize("compute_dtype,matmul_dtype", [("bfloat16", "bf16"),
                                                        ("float32", "f32")])
def test_train_step_matmuls_run_in_the_compute_dtype(compute_dtype, matmul_dtype):
  dots, kernels = _dots(compute_dtype)
  # The contrastive similarity S = z_ctr z_cvr^T is asked for at HIGHEST precision in
  # float32 (forward and the two gradients): the loss is float32 whatever the compute.
  contrast = [d for d in dots if d[0] == "HIGHEST"]
  assert len(contrast) == 3
  assert all(d[2] == d[4] == d[5] == "f32" for d in contrast)
  model = [d for d in dots if d[0] != "HIGHEST"]
  dtypes = {(lhs, rhs, out) for _, _, lhs, _, rhs, out in model}
  assert dtypes == {(matmul_dtype,) * 3}
  # Every dense layer's kernel (float32 params, cast to the compute dtype) is an
  # operand of one of these matmuls: none of them is computed in float32.
  operand_shapes = {_shape(s) for d in model for s in (d[1], d[3])}
  missing = {name: shape for name, shape in kernels.items() if shape not in operand_shapes}
  assert not missing
  # Forward, input gradient and weight gradient of each layer (the first layers'
  # input gradients are not needed): at least two matmuls a kernel.
  assert len(model) >= 2 * len(kernels)
