"""The convention every ``launch/`` script follows: absl flags, and one line per failure.

A script defines its flags at module level and ends with ``cli.run(main)``. What goes
wrong because of what the user gave prints as one line, ``error: <message>``, with exit
status 1 and no usage dump; ``--verbose`` adds the traceback (``--help`` lists it and
``--config`` with the script's own flags):

* the command line itself (parsed here, not by ``app.run``'s own parser, which prints
  the usage): an unknown flag, a value that does not parse as the flag's type, an
  unknown ``--config.KEY``, a config file that fails to load, a missing required flag;
* the project's own errors, raised where user input is checked (``is_user_error``):
  ``FlagError``, ``ConfigError``, ``DataError``, the checkpoint errors, a diverged run
  (``DivergenceError``), and the file system's errors about the user's files (not found, exists, permission, disk full).

The rule for library code: a check of user input (a flag, a config value, a file)
raises one of the project's error classes, never a bare ``ValueError``; anything else
that escapes is a bug and keeps its traceback. ``--help`` works as absl's does.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
import traceback

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from pico_jax.data.errors import one_line

VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print the traceback as well "
                            "as the one-line message.")

# The file system's errors about the user's files: the message and the path say it all.
_FILE_ERRNOS = frozenset({errno.ENOENT, errno.EEXIST, errno.EACCES, errno.EPERM,
                          errno.EISDIR, errno.ENOTDIR, errno.ENOSPC, errno.EROFS,
                          errno.EDQUOT, errno.ENAMETOOLONG})


class FlagError(ValueError):
  """A command-line flag has an invalid value; the message names the flag."""


def refuse_flags(names: tuple[str, ...], because: str) -> None:
  """Raises a FlagError naming those of the flags ``names`` given on the command line,
  ``because`` saying why the command has no use for them: a flag is refused rather than
  silently ignored."""
  given = [f"--{name}" for name in names if flags.FLAGS[name].present]
  if given:
    raise FlagError(f"{because}: leave out {', '.join(given)}")


def project_errors() -> tuple[type[BaseException], ...]:
  """The project's exception types whose message alone says what went wrong."""
  from pico_jax.config_keys import ConfigError
  from pico_jax.data.errors import DataError
  from pico_jax.train.checkpoint import CheckpointMismatchError, CheckpointRestoreError
  from pico_jax.train.loop import DivergenceError
  from pico_jax.workdir import WorkdirError
  return (FlagError, ConfigError, DataError, CheckpointMismatchError, CheckpointRestoreError,
          DivergenceError, WorkdirError)


def is_user_error(error: BaseException) -> bool:
  """Whether ``error`` is reported as one line: a project error, or a file-system error
  about a path (see the module docstring)."""
  if isinstance(error, OSError) and error.errno in _FILE_ERRNOS:
    return True
  return isinstance(error, (FileNotFoundError, FileExistsError, PermissionError,
                            *project_errors()))


def configure_logging(verbose_module: str = "pico_jax"):
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", force=True)
  logging.getLogger(verbose_module).setLevel(logging.INFO)


def _verbose_in(argv) -> bool:
  """``--verbose`` as given in ``argv`` (read before the flags parse: for their errors)."""
  verbose = False
  for arg in argv[1:]:
    name = arg.lstrip("-")
    if name in ("verbose", "verbose=true", "verbose=True", "verbose=1"):
      verbose = True
    elif name in ("noverbose", "verbose=false", "verbose=False", "verbose=0"):
      verbose = False
  return verbose


def _config_override(argv, missing: str) -> str | None:
  """The ``--config.KEY=...`` argument of ``argv`` whose KEY has the component
  ``missing`` (what ml_collections reports for an unknown key), if one has."""
  for arg in argv[1:]:
    match = re.match(r"-{1,2}(?:no)?\w+\.([\w.]+)", arg)
    if match and missing in match.group(1).split("."):
      return arg
  return None


def flag_error_message(error: Exception, argv) -> str:
  """One line saying what is wrong with the command line ``argv``."""
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections: an unknown key.
    message = error
    while isinstance(message, BaseException):  # KeyError's str() is its repr.
      message = message.args[0] if message.args else ""
    first, _, hint = str(message).partition("\n")
    arg = _config_override(argv, first.strip("'\""))
    if arg is not None:
      flag, _, key = arg.split("=", 1)[0].lstrip("-").partition(".")
      hint = hint.strip()
      hint = f" ({hint[0].lower()}{hint[1:]})" if hint else ""
      return f"{arg}: {key!r} is not a key of --{flag}{hint}"
  if "Traceback (most recent call last)" in text:
    # A config file's get_config raised; ml_collections put its traceback in the
    # message. Its last line is the error; name the flag unless that line does.
    head = text.split(": Error whilst parsing", 1)[0].removeprefix("flag ")
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    cause = re.sub(r"^\w+(Error|Exception): ", "", last)
    return cause if head.split("=", 1)[-1] in cause else f"{head}: {last}"
  if isinstance(error, flags.Error):
    return one_line(error)
  return f"{type(error).__name__}: {one_line(error)}"


_CONFIG_FLAGS = []  # the FlagHolders of define_config.


def define_config(default: str, help_string: str, name: str = "config"):
  """``--config``: a config file (``configs/*.py``, ``PATH:ARG``) with
  ``--config.KEY=VALUE`` overrides, locked so an unknown key fails.

  Without ``--config`` on the command line ml_collections loads the default and
  applies the overrides here, while the script's module is imported: a failure then
  is reported here, as one line, like any other of the command line's.
  """
  try:
    holder = config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except Exception as e:  # noqa: BLE001 -- the command line's overrides failed.
    _fail(flag_error_message(e, sys.argv), sys.argv)
  _CONFIG_FLAGS.append(holder)
  return holder


def _fail(text: str, argv):
  if _verbose_in(argv):
    traceback.print_exc()
  print(f"error: {text}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  """absl's flag parsing, each failure one line ``error: ...`` and exit status 1.

  Used as ``app.run``'s ``flags_parser``: absl's default prints the whole usage.
  Positional arguments are an error too (every script takes flags only).
  """
  try:
    rest = flags.FLAGS(argv)
    if len(rest) > 1:
      raise FlagError(f"unexpected arguments: {rest[1:]}")
  except FlagError as e:
    _fail(one_line(e), argv)
  except Exception as e:  # noqa: BLE001 -- whatever the command line makes fail.
    _fail(flag_error_message(e, argv), argv)
  for holder in _CONFIG_FLAGS:
    # A config file that cannot be read is a stand-in that raises on first use
    # (ml_collections defers the error so that --help works): use it now.
    if not isinstance(holder.value, ml_collections.ConfigDict):
      try:
        holder.value.keys()
      except OSError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        path = config_flags.get_config_filename(flags.FLAGS[holder.name])
        _fail(f"--{holder.name}={path}: {lines[-1]}", argv)
  return rest


def run(main):
  """``app.run(main)`` with the command line's and the project's errors as one line."""
  def wrapped(argv):
    del argv  # checked by parse_flags.
    configure_logging()
    try:
      return main()
    except KeyboardInterrupt as e:  # Ctrl-C: the run says what it saved (periodic.py).
      if VERBOSE.value:
        traceback.print_exc()
      print(f"error: {one_line(e) if str(e) else 'interrupted (Ctrl-C)'}", file=sys.stderr)
      return 130
    except Exception as e:  # noqa: BLE001 -- re-raised unless a user error.
      if not is_user_error(e):
        raise
      if VERBOSE.value:
        traceback.print_exc()
      print(f"error: {one_line(e)}", file=sys.stderr)
      return 1
  # --help lists the main module's flags; these are defined here, for every script.
  for holder in (VERBOSE, *_CONFIG_FLAGS):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[holder.name])
  app.run(wrapped, flags_parser=parse_flags)
