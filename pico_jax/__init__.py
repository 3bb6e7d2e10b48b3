"""pico_jax: joint CTR & CVR estimation with PICO, in JAX/Flax.

Progress (the run's set-up, the train and eval lines, early stopping, warnings) is
logged on the ``pico_jax`` logger at INFO, so a plain script or notebook shows it with
no set-up: while the program has configured no logging (the root logger has no
handler), the handler below writes it to stderr; once a handler is on the root logger
(``logging.basicConfig``, absl, a notebook's set-up) the records go there instead, once.
Nothing is configured on import but the ``pico_jax`` logger itself; to quiet it:
``logging.getLogger("pico_jax").setLevel(logging.WARNING)``.
"""

import logging
import sys

__version__ = "0.1.0"


class _UntilConfigured(logging.StreamHandler):
  """stderr (looked up at each record: notebooks and test runners swap it) while the
  root logger has no handler; silent after, so no line prints twice."""

  def emit(self, record):
    if logging.getLogger().handlers:
      return
    self.stream = sys.stderr
    super().emit(record)


def _library_logging():
  logger = logging.getLogger(__name__)
  if logger.level == logging.NOTSET:  # a level the program set first is kept.
    logger.setLevel(logging.INFO)
  if not any(isinstance(h, _UntilConfigured) for h in logger.handlers):
    handler = _UntilConfigured()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)


_library_logging()
