"""The per-process checks that the Pallas contrast kernel works on this device.

On an accelerator the kernel is compiled by Pallas (Triton on GPU, Mosaic on TPU) for
the first time in the user's process; a compiler or driver change could break it or
make it wrong. ``kernel_works`` compiles value-and-gradient of both kernels of the
platform's form (``forms.for_platform``: ``anchor_logsumexp``, ``pair_logsumexp``) on
small ragged inputs, runs them, and compares them with the plain XLA logsumexp.

Small inputs cannot show what only the training's shape shows (a block the backend
rejects at that feature dimension, a kernel that does not fit in memory), so
``shape_works`` lowers value-and-gradient of the contrast at the configured shape,
ahead of time, and compiles it when the platform is this process's backend.

Any exception or mismatch makes a check return False after one warning that names the
error, and the caller (``implementations.resolve``) uses "xla" (or "chunked" when a
chunk size is set): a user never gets a crash or wrong numbers from the kernel. The
verdicts are cached (per backend; per backend and shape) for the life of the process.
"""

from __future__ import annotations

import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from pico_jax.contrast import forms, pallas_lse

log = logging.getLogger("pico_jax")

# Per-backend verdicts: backend name -> None (works) or the error's description.
_VERDICTS: dict[str, str | None] = {}
# Per-shape verdicts: (backend name, shape key) -> None (lowers) or the description.
_SHAPE_VERDICTS: dict[tuple, str | None] = {}
# Float32 products run at IEEE precision in both forms; the differences are summation
# order. Loose enough for that, tight enough for any real bug (a wrong mask or tile).
_RTOL, _ATOL = 2e-4, 2e-5


def interpret_mode() -> bool:
  """Whether Pallas kernels run in interpret mode: on CPU, which has no Pallas compiler."""
  return pallas_lse.platform() == "cpu"


def _inputs():
  """Ragged problems (no multiple of a tile): anchors [300, 24] against candidates
  [200, 24] (as on one device of the sharded form), and the pair a, b [300, 24]."""
  rng = np.random.default_rng(0)
  unit = lambda n: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(
      rng.normal(size=(n, 24)).astype(np.float32))
  a, c, b = unit(300), unit(200), unit(300)
  inv_tau = rng.uniform(1.0, 20.0, size=300).astype(np.float32)
  g, h = rng.normal(size=(2, 300)).astype(np.float32)
  return a, b, c, inv_tau, g, h


def _xla_lse(anchors, candidates, inv_tau):
  return jax.nn.logsumexp(jnp.dot(anchors, candidates.T, precision=jax.lax.Precision.HIGHEST)
                          * inv_tau[:, None], axis=1)


def _describe(e: Exception) -> str:
  return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _warn(message: str) -> None:
  warnings.warn(message, RuntimeWarning, stacklevel=3)
  log.warning(message)


def _compare(interpret: bool) -> str | None:
  """None if both kernels agree with XLA on value and all three gradients, else why not."""
  form = forms.for_platform(pallas_lse.platform())
  a, b, c, inv_tau, g, h = _inputs()
  single = lambda lse: lambda x, y, t: jnp.sum(g * lse(x, y, t))
  pair = lambda lse_pair: lambda x, y, t: sum(
      jnp.sum(w * v) for w, v in zip((g, h), lse_pair(x, y, t)))
  cases = [
      ("anchor_logsumexp", (a, c, inv_tau),
       single(lambda x, y, t: form.anchor_logsumexp(x, y, t, interpret=interpret)),
       single(_xla_lse)),
      ("pair_logsumexp", (a, b, inv_tau),
       pair(lambda x, y, t: form.pair_logsumexp(x, y, t, interpret=interpret)),
       pair(lambda x, y, t: (_xla_lse(x, y, t), _xla_lse(y, x, t)))),
  ]
  for kernel_name, args, kernel, xla in cases:
    run = lambda f: jax.device_get(jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
                                   .lower(*args).compile()(*args))
    try:
      # Ahead-of-time compiled executables run eagerly, also while a jit is being
      # traced (where the check may run): nothing of this joins the caller's trace.
      got = run(kernel)
    except Exception as e:  # noqa: BLE001  (any compile or run failure: do not use it)
      return f"{kernel_name}: {_describe(e)}"
    names = ("value", "d first", "d second", "d inv_tau")
    for name, x, y in zip(names, jax.tree.leaves(got), jax.tree.leaves(run(xla))):
      if not np.allclose(x, y, rtol=_RTOL, atol=_ATOL):
        return (f"{kernel_name}: mismatch in {name}: max abs difference "
                f"{float(np.max(np.abs(np.asarray(x) - np.asarray(y)))):.3g}")
  return None


def kernel_works(fallback: str = "xla") -> bool:
  """Whether the Pallas kernel passed this process's self-check on the default backend.

  Runs the check on first call (it compiles and executes ahead of time, so it may be
  called while a jit is being traced) and warns, once, with the error when it fails;
  ``fallback`` names the implementation the caller uses instead (for the warning).
  """
  name = pallas_lse.platform()
  if name not in _VERDICTS:
    _VERDICTS[name] = _compare(interpret=interpret_mode())
    if _VERDICTS[name] is not None:
      _warn(f"the Pallas contrast kernel failed its self-check on {name} "
            f"({_VERDICTS[name]}); using implementation={fallback!r} instead")
  return _VERDICTS[name] is None


def shape_works(key, describe: str, lower, compile_it: bool, fallback: str = "xla") -> bool:
  """Whether the kernel lowers (and, with ``compile_it``, compiles) at one shape.

  Args:
    key: hashable, the shape's identity (cached with the backend's name).
    describe: the shape in words, for the warning.
    lower: () -> ``jax.stages.Lowered``, the contrast's value and gradient lowered
      ahead of time at that shape (nothing joins a surrounding trace).
    compile_it: compile the lowering too (on this process's accelerator).
    fallback: the implementation the caller uses instead (for the warning).
  """
  name = pallas_lse.platform()
  if (name, key) not in _SHAPE_VERDICTS:
    try:
      lowered = lower()
      if compile_it:
        lowered.compile()
      _SHAPE_VERDICTS[name, key] = None
    except Exception as e:  # noqa: BLE001  (any lowering or compile failure: do not use it)
      _SHAPE_VERDICTS[name, key] = _describe(e)
      _warn(f"the Pallas contrast kernel cannot take the configured shape on {name} "
            f"({describe}: {_SHAPE_VERDICTS[name, key]}); using "
            f"implementation={fallback!r} instead")
  return _SHAPE_VERDICTS[name, key] is None
