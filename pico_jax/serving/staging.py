"""Writing a directory whole or not at all: staged beside its target, renamed in.

An export writes every file into ``.NAME.tmp-*`` next to ``NAME`` and renames it into
place when complete; an artifact already at ``NAME`` is first renamed aside
(``.NAME.old-*``) and removed after. A process killed at any point leaves ``NAME``
the old artifact, the new one, or (killed between the two renames) nothing, with the
old one whole in ``.NAME.old-*``; never a mix. The next export to ``NAME`` first puts
such an old artifact back, then removes (and says) what was left beside ``NAME``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tempfile

from pico_jax.data.errors import DataError

log = logging.getLogger("pico_jax")


@contextlib.contextmanager
def staged_directory(target: str, is_replaceable):
  """Yields an empty staging directory next to ``target``; on a normal exit it becomes
  ``target``, on an exception it is removed and ``target`` is untouched.

  ``is_replaceable(target)``: whether an existing, non-empty ``target`` may be
  replaced (it is what this writer writes); else DataError naming it, before anything
  is written.
  """
  target = os.path.abspath(target)
  parent, name = os.path.split(target)
  if os.path.exists(target) and not (os.path.isdir(target) and (
      not os.listdir(target) or is_replaceable(target))):
    raise DataError("exists and is not an artifact this writer made (no manifest.json "
                    "of one); choose another output or remove it", path=target)
  os.makedirs(parent, exist_ok=True)
  if not os.path.exists(target):  # killed between the renames: the old one is whole.
    for aside in sorted(glob.glob(os.path.join(parent, f".{glob.escape(name)}.old-*",
                                               glob.escape(name)))):
      os.rename(aside, target)
      log.warning("put back %s as %s, left aside by an interrupted export", aside, target)
      break
  for leftover in sorted(glob.glob(os.path.join(parent, f".{glob.escape(name)}.tmp-*"))
                         + glob.glob(os.path.join(parent, f".{glob.escape(name)}.old-*"))):
    shutil.rmtree(leftover, ignore_errors=True)
    log.warning("removed %s, left by an interrupted export", leftover)
  staging = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  if not os.path.exists(target):
    os.rename(staging, target)
    return
  aside = tempfile.mkdtemp(dir=parent, prefix=f".{name}.old-")
  os.rename(target, os.path.join(aside, name))
  os.rename(staging, target)
  shutil.rmtree(aside)
