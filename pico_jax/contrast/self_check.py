"""The one-time, per-process check that the Pallas contrast kernel works on this device.

On an accelerator the kernel is compiled by Pallas (Triton on GPU, Mosaic on TPU) for
the first time in the user's process; a compiler or driver change could break it or
make it wrong. ``kernel_works`` compiles value-and-gradient of the kernel on a small
ragged input, runs it, and compares it with the plain XLA logsumexp. Any exception or
mismatch makes it return False after a warning that names the error, and the caller
(``implementations.resolve``) uses "xla": a user never gets a crash or wrong numbers
from the kernel. The verdict is cached per backend for the life of the process.
"""

from __future__ import annotations

import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from pico_jax.contrast import pallas_lse

log = logging.getLogger("pico_jax")

# Per-backend verdicts: backend name -> None (works) or the error's description.
_VERDICTS: dict[str, str | None] = {}
# Float32 products run at IEEE precision in both forms; the differences are summation
# order. Loose enough for that, tight enough for any real bug (a wrong mask or tile).
_RTOL, _ATOL = 2e-4, 2e-5


def backend() -> str:
  """The default jax backend ("cpu", "gpu", "tpu")."""
  return jax.default_backend()


def interpret_mode() -> bool:
  """Whether Pallas kernels run in interpret mode: on CPU, which has no Pallas compiler."""
  return backend() == "cpu"


def _inputs():
  """A ragged problem (not a multiple of any tile): 300 anchors, 200 candidates, d 24."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(300, 24)).astype(np.float32)
  c = rng.normal(size=(200, 24)).astype(np.float32)
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  inv_tau = rng.uniform(1.0, 20.0, size=300).astype(np.float32)
  g = rng.normal(size=300).astype(np.float32)
  return a, c, inv_tau, g


def _compare(interpret: bool) -> str | None:
  """None if kernel and XLA agree on value and all three gradients, else why not."""
  a, c, inv_tau, g = _inputs()

  def loss(lse_fn, a, c, t):
    return jnp.sum(lse_fn(a, c, t) * g)

  kernel = lambda a, c, t: pallas_lse.anchor_logsumexp(a, c, t, interpret=interpret)
  xla = lambda a, c, t: jax.nn.logsumexp(
      jnp.dot(a, c.T, precision=jax.lax.Precision.HIGHEST) * t[:, None], axis=1)
  try:
    # Ahead-of-time compiled executables run eagerly, also while a jit is being
    # traced (where the check usually runs): nothing of this joins the caller's trace.
    compiled = jax.jit(jax.value_and_grad(lambda *x: loss(kernel, *x), argnums=(0, 1, 2))
                       ).lower(a, c, inv_tau).compile()
    got = jax.device_get(compiled(a, c, inv_tau))
  except Exception as e:  # noqa: BLE001  (any compile or run failure means: do not use it)
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  want = jax.jit(jax.value_and_grad(lambda *x: loss(xla, *x), argnums=(0, 1, 2))
                 ).lower(a, c, inv_tau).compile()(a, c, inv_tau)
  want = jax.device_get(want)
  names = ("value", "d anchors", "d candidates", "d inv_tau")
  for name, x, y in zip(names, jax.tree.leaves(got), jax.tree.leaves(want)):
    if not np.allclose(x, y, rtol=_RTOL, atol=_ATOL):
      return (f"mismatch in {name}: max abs difference "
              f"{float(np.max(np.abs(np.asarray(x) - np.asarray(y)))):.3g}")
  return None


def kernel_works(fallback: str = "xla") -> bool:
  """Whether the Pallas kernel passed this process's self-check on the default backend.

  Runs the check on first call (it compiles and executes ahead of time, so it may be
  called while a jit is being traced) and warns, once, with the error when it fails;
  ``fallback`` names the implementation the caller uses instead (for the warning).
  """
  name = backend()
  if name not in _VERDICTS:
    _VERDICTS[name] = _compare(interpret=interpret_mode())
    if _VERDICTS[name] is not None:
      message = (f"the Pallas contrast kernel failed its self-check on {name} "
                 f"({_VERDICTS[name]}); using implementation={fallback!r} instead")
      warnings.warn(message, RuntimeWarning, stacklevel=2)
      log.warning(message)
  return _VERDICTS[name] is None
