"""The convention every ``launch/`` script follows: absl flags, and one line per failure.

A script defines its flags at module level and ends with ``cli.run(main)``. An error
of the project's own kinds (bad config, bad data, a checkpoint that cannot be used,
files that cannot be written) prints as one line, ``error: <message>``, with exit
status 1; ``--verbose`` adds the traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback

from absl import app, flags

VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print the traceback as well "
                            "as the one-line message.")


class FlagError(ValueError):
  """A command-line flag has an invalid value; the message names the flag."""


def project_errors() -> tuple[type[BaseException], ...]:
  """The exception types whose message alone says what went wrong and what to do."""
  from pico_jax.config import ConfigError
  from pico_jax.data.errors import DataError
  from pico_jax.train.checkpoint import CheckpointMismatchError, CheckpointRestoreError
  return (FlagError, ConfigError, DataError, CheckpointMismatchError, CheckpointRestoreError,
          FileNotFoundError, FileExistsError, PermissionError)


def one_line(error: BaseException) -> str:
  """``error`` as one line: its type where the message alone is ambiguous, no newlines."""
  text = " ".join(str(error).split())
  if isinstance(error, OSError) and error.filename and error.filename not in text:
    text = f"{error.filename}: {text}"
  return text or type(error).__name__


def configure_logging(verbose_module: str = "pico_jax"):
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", force=True)
  logging.getLogger(verbose_module).setLevel(logging.INFO)


def run(main):
  """``app.run(main)`` with the project's errors reported as one line each."""
  def wrapped(argv):
    configure_logging()
    try:
      if len(argv) > 1:
        raise FlagError(f"unexpected arguments: {argv[1:]}")
      return main()
    except project_errors() as e:
      if VERBOSE.value:
        traceback.print_exc()
      print(f"error: {one_line(e)}", file=sys.stderr)
      return 1
  app.run(wrapped)
