"""Whether a checkpoint fits the run resuming it: the same params (shapes, dtypes), the
same data (``data_identity``), data order and process count; which config keys may
change across a resume.
"""

from __future__ import annotations

import json
import logging
import os
import re

import jax
import numpy as np

from pico_jax.train.checkpoint_failures import (CheckpointMismatchError,
                                                CheckpointRestoreError)

log = logging.getLogger("pico_jax")
_PROCESS_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")

# Config sections that may differ between a checkpoint and the run resuming it.
_RESUMABLE_SECTIONS = ("train", "checkpoint", "mesh")
_RESUMABLE_KEYS = ("data.prefetch", "data.num_threads", "data.eval_split",
                   "data.allow_new_data", "data.verify_shards")
# Keys that fix which rows the saved data-iterator position points at: a resume with
# any of them changed would silently train on a different data order.
_DATA_ORDER_KEYS = ("seed", "train.batch_size", "data.name", "data.path",
                    "data.shuffle_window", "data.order")


NOT_RECORDED = "not recorded"  # a checkpoint saved before the data's identity was.


def data_identity(config, dataset) -> dict:
  """What identifies the rows of ``dataset`` (loaded for ``config``), as each checkpoint
  records it: a store's fingerprint (``pico_jax.data.integrity``: equal fingerprints,
  equal stores) and its sources' BLAKE3, for stores built before fingerprints; for
  synthetic data, a fingerprint of the generator's settings and seed, which fix every
  row."""
  from pico_jax.data import data_seed, integrity
  if config.data.name == "store":
    meta = dataset.info.get("meta") or {}
    return {"store": dataset.info.get("path"), "fingerprint": meta.get(integrity.FINGERPRINT),
            "sources": [s.get("blake3") for s in meta.get("sources", [])]}
  settings = json.dumps(dict(config.data.synthetic.to_dict(), seed=data_seed(config)),
                        sort_keys=True)
  return {"synthetic": config.data.synthetic.kind,
          "fingerprint": integrity.digest_bytes(settings.encode())}


def _same_data(saved: dict, current: dict) -> tuple[bool | None, str]:
  """(whether ``saved`` and ``current`` identify the same data, None when they cannot
  be compared; what was compared)."""
  if saved.get("fingerprint") and current.get("fingerprint"):
    return saved["fingerprint"] == current["fingerprint"], "fingerprint"
  sources = saved.get("sources"), current.get("sources")
  if all(sources) and all(all(s) for s in sources):
    return sources[0] == sources[1], ("sources' BLAKE3 only (no fingerprint: a store built "
                                      "before checksums)")
  return None, "nothing"


def _describe(identity: dict) -> str:
  where = (f"store {identity['store']}" if "store" in identity
           else f"synthetic data ({identity.get('synthetic')})")
  if identity.get("fingerprint"):
    return f"{where} with fingerprint {identity['fingerprint']}"
  return f"{where} without a fingerprint, sources' BLAKE3 {identity.get('sources')}"


def check_same_data(path: str, saved, current: dict | None, allow_new_data: bool):
  """Raises CheckpointMismatchError naming both identities when the checkpoint at
  ``path`` (its recorded identity ``saved``: a dict, None for an old checkpoint without
  checksums, or ``NOT_RECORDED``) was trained on other data than ``current``; with
  ``allow_new_data`` it warns and goes on (continuing training on new data)."""
  if current is None:
    return
  if not isinstance(saved, dict):
    log.warning("checkpoint %s records no fingerprint of its data (saved by an earlier "
                "version): the data are not compared (data.path still is)", path)
    return
  same, what = _same_data(saved, current)
  if same is None:
    log.warning("checkpoint %s: its data and this run's cannot be compared (neither a "
                "fingerprint nor the sources' BLAKE3 on both sides)", path)
    return
  if not what.startswith("fingerprint"):
    log.warning("checkpoint %s: compared the store's %s", path, what)
  if same:
    return
  text = (f"checkpoint {path} was trained on {_describe(saved)}; this run reads "
          f"{_describe(current)}")
  if allow_new_data:
    log.warning("%s: continuing on the new data (config.data.allow_new_data)", text)
    return
  raise CheckpointMismatchError(
      f"{text}. Use the data it was trained on, a new --workdir, or (to continue on new "
      "data on purpose) config.data.allow_new_data=True")


def flatten_config(tree: dict, prefix: str = "") -> dict:
  """A nested config dict as ``{"dotted.key": value}``."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(flatten_config(v, f"{prefix}{k}."))
  else:
    out[prefix[:-1]] = tree
  return out


def config_differences(saved: dict, current: dict) -> list[str]:
  """``key: saved -> current`` for every config key whose value differs, sorted."""
  # Through JSON, as the saved one was: tuples become lists on both sides.
  a, b = (flatten_config(json.loads(json.dumps(c))) for c in (saved, current))
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def path_name(path) -> str:
  """A pytree key path as ``opt_state/0/mu/embedding/table``: the same for a live state
  and for orbax's metadata tree of it (where dataclasses and named tuples are dicts)."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def leaves_by_path(tree) -> dict:
  """``{path_name: leaf}`` of ``tree``."""
  return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def state_problems(saved_metadata, abstract_state) -> list[str]:
  """One line per leaf of ``abstract_state`` that the saved state (orbax's metadata
  tree) lacks or holds with another shape or dtype, and per saved leaf the state
  lacks."""
  have, want = leaves_by_path(saved_metadata), leaves_by_path(abstract_state)
  problems = []
  for key, leaf in want.items():
    if key not in have:
      problems.append(f"{key}: not in the checkpoint")
    elif tuple(have[key].shape) != tuple(leaf.shape):
      problems.append(f"{key}: saved shape {tuple(have[key].shape)}, this config "
                      f"needs {tuple(leaf.shape)}")
    elif np.dtype(have[key].dtype) != np.dtype(leaf.dtype):
      problems.append(f"{key}: saved dtype {have[key].dtype}, this config needs "
                      f"{leaf.dtype}")
  return problems + [f"{k}: in the checkpoint, not in this model"
                     for k in sorted(set(have) - set(want))]


def model_differences(saved: dict, current: dict) -> list[str]:
  """The config differences that change the model (the resumable ones left out)."""
  return [d for d in config_differences(saved, current) if not _resumable(d)]


def data_order_differences(saved: dict, current: dict) -> list[str]:
  """The config differences that move the saved data position onto other rows."""
  return [d for d in config_differences(saved, current)
          if _key(d) in _DATA_ORDER_KEYS or _key(d).startswith("data.synthetic.")]


def _key(diff: str) -> str:
  return diff.split(":")[0]


def _resumable(diff: str) -> bool:
  return diff.split(".")[0] in _RESUMABLE_SECTIONS or _key(diff) in _RESUMABLE_KEYS


def check_process_count(path: str, data_dir: str):
  """Raises CheckpointRestoreError when the checkpoint at ``path`` saved its data
  position (``data_dir``) with another number of processes than this job has."""
  names = os.listdir(data_dir) if os.path.isdir(data_dir) else []
  counts = {int(m.group(2)) for m in map(_PROCESS_FILE.search, names) if m}
  if counts and counts != {jax.process_count()}:
    saved = sorted(counts)[0]
    step, directory = os.path.basename(path), os.path.dirname(path)
    raise CheckpointRestoreError(
        f"checkpoint {step} in {directory} was written by {saved} process(es); this job "
        f"has {jax.process_count()}. Its data-iterator position is saved per process, so "
        f"it resumes only with the same process count: rerun with {saved} process(es) "
        "(--num_processes), or start a new --workdir.")


def check_state_fits(path: str, saved_metadata, abstract_state, saved_config, config: dict):
  """Raises CheckpointMismatchError naming every leaf of the checkpoint at ``path`` that
  does not fit ``abstract_state``, and the model keys of ``saved_config()`` that differ
  from ``config``."""
  problems = state_problems(saved_metadata, abstract_state)
  if not problems:
    return
  diffs = model_differences(saved_config(), config)
  raise CheckpointMismatchError(
      f"checkpoint {path} does not fit this config:\n  " + "\n  ".join(problems[:20])
      + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
      + "\nconfig keys that differ from the checkpoint's: "
      + ("; ".join(diffs) if diffs else "none (the dataset schema changed?)")
      + "\nUse a new --workdir, or the checkpoint's config.")


def check_same_run(path: str, saved: dict, config: dict):
  """Raises CheckpointMismatchError if a key that fixes the data order differs between
  the checkpoint's config ``saved`` and ``config``; logs every other changed key
  (except runtime-only ones)."""
  order = data_order_differences(saved, config)
  if order:
    raise CheckpointMismatchError(
        f"checkpoint {path} was written with a different data order: {'; '.join(order)}. "
        "Its data-iterator position would point at other rows. Use a new --workdir, or "
        "the checkpoint's values.")
  changed = model_differences(saved, config)
  if changed:
    log.warning("resuming checkpoint %s with a changed config: %s", os.path.basename(path),
                "; ".join(changed))
