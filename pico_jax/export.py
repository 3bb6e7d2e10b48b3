"""The serving function and its ``jax.export`` artifact.

Serving is features -> (p_ctr, p_cvr, p_ctcvr): embeddings, backbone, towers and
logits only. The projection heads and the relatedness network (``params["contrast"]``)
are neither traced nor stored: PICO adds nothing at inference.

An artifact is a directory:

  serving.jax_export  the serialized ``jax.export.Exported`` of
                      ``fn(params: list[array], features: dict) -> dict``, lowered for
                      every platform asked for (default cpu, cuda and tpu), with a
                      symbolic batch dimension ``batch``.
  params.npz          the serving params, ``p0000``, ``p0001``, ... in the order of
                      the manifest's ``params``.
  manifest.json       inputs (name, shape with "batch" for the batch dimension, dtype),
                      outputs, params (name, key, shape, dtype), num_params, platforms,
                      the jax version, the training step and the config.
  serve.py            a loader that needs only jax and numpy:
                        from serve import load; predict = load(DIR)
                        predict({"sparse": ..., "dense": ...})  # -> dict of [B] arrays
                      or: python serve.py DIR features.npz predictions.npz

Load it from Python with ``pico_jax.export.load(DIR)`` (which runs that same serve.py).
"""

from __future__ import annotations

import json
import os
import runpy

import jax
import numpy as np

from pico_jax import calibration
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema
from pico_jax.models import serving_params
from pico_jax.train.state import example_features

ARTIFACT_FILE = "serving.jax_export"
PARAMS_FILE = "params.npz"
MANIFEST_FILE = "manifest.json"
LOADER_FILE = "serve.py"
FORMAT = "pico_jax.serving/1"
BATCH_DIM = "batch"
OUTPUTS = ("p_ctr", "p_cvr", "p_ctcvr")
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def serving_function(model, pos_weight_loss=None):
  """``fn(params, features) -> {p_ctr, p_cvr, p_ctcvr}``: float32 [B] each.

  ``params`` are serving params (``pico_jax.models.serving_params``); ``features``
  holds the model inputs of ``pico_jax.batch.FEATURE_KEYS`` that the schema has. With
  ``pos_weight_loss`` (a ``config.loss``) the probabilities are mapped back through
  ``pico_jax.calibration.correct_predictions`` inside the function.
  """
  def serve(params, features):
    out = model.apply({"params": params}, features, train=False, with_contrast=False)
    out = {k: out[k] for k in OUTPUTS}
    if pos_weight_loss is not None:
      out = calibration.correct_predictions(out, pos_weight_loss)
    return out
  return serve


def num_params(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def export_model(model, params, schema: Schema, output_dir: str, *,
                 platforms=DEFAULT_PLATFORMS, step: int | None = None,
                 config=None, correct_pos_weight: bool = False) -> dict:
  """Writes the serving artifact of ``model`` with ``params`` to ``output_dir``.

  Args:
    model: the trained ``PicoModel``.
    params: its (training) params; the contrast subtree is dropped here.
    schema: the dataset schema (input names and shapes).
    output_dir: created if needed; existing artifact files are overwritten.
    platforms: lowering platforms of the artifact.
    step, config: recorded in the manifest.
    correct_pos_weight: serve probabilities corrected for ``config.loss.pos_weight``
      (``pico_jax.calibration``); recorded in the manifest.
  Returns:
    The manifest (as written).
  """
  host = jax.tree.map(np.asarray, jax.device_get(serving_params(params)))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(host)
  names = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in leaves]
  arrays = [np.asarray(x) for _, x in leaves]
  if correct_pos_weight and config is None:
    raise ValueError("export: correct_pos_weight needs the config (its loss.pos_weight)")
  serve = serving_function(model, config.loss if correct_pos_weight else None)

  def flat_serve(flat_params, features):
    return serve(jax.tree.unflatten(treedef, flat_params), features)

  (batch,) = jax.export.symbolic_shape(BATCH_DIM)
  example = example_features(schema, batch_size=1)
  feature_specs = {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype)
                   for k, v in example.items()}
  param_specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
  exported = jax.export.export(jax.jit(flat_serve), platforms=tuple(platforms))(
      param_specs, feature_specs)

  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, ARTIFACT_FILE), "wb") as f:
    f.write(exported.serialize())
  keys = [f"p{i:04d}" for i in range(len(arrays))]
  np.savez(os.path.join(output_dir, PARAMS_FILE), **dict(zip(keys, arrays)))
  manifest = {
      "format": FORMAT,
      "artifact": ARTIFACT_FILE,
      "params_file": PARAMS_FILE,
      "inputs": [{"name": k, "shape": [BATCH_DIM] + list(v.shape[1:]),
                  "dtype": np.dtype(v.dtype).name} for k, v in example.items()],
      "outputs": [{"name": k, "shape": [BATCH_DIM], "dtype": "float32"} for k in OUTPUTS],
      "params": [{"name": n, "key": k, "shape": list(a.shape), "dtype": a.dtype.name}
                 for n, k, a in zip(names, keys, arrays)],
      "num_params": num_params(arrays),
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "step": step,
      "pos_weight_corrected": bool(correct_pos_weight),
      "schema": schema.to_json(),
      "config": config.to_dict() if config is not None else None,
  }
  with open(os.path.join(output_dir, MANIFEST_FILE), "w") as f:
    json.dump(manifest, f, indent=2, default=_json_default)
  with open(os.path.join(output_dir, LOADER_FILE), "w") as f:
    f.write(LOADER_SOURCE)
  return manifest


def _json_default(x):
  if isinstance(x, tuple):
    return list(x)
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"manifest: cannot write {type(x).__name__} {x!r} as JSON")


def load(artifact_dir: str):
  """``predict(features) -> {p_ctr, p_cvr, p_ctcvr}`` of an artifact (via its serve.py).

  Raises DataError naming the file when a file of the artifact is missing or damaged.
  """
  loader = os.path.join(artifact_dir, LOADER_FILE)
  try:
    namespace = runpy.run_path(loader)
  except Exception as e:  # noqa: BLE001 -- serve.py is missing or damaged.
    raise DataError(f"cannot run the artifact's loader: {_cause(e)}", path=loader) from e
  try:
    return namespace["load"](artifact_dir)
  except Exception as e:
    if getattr(e, "path", None) is None:  # serve.ArtifactError names the file.
      raise
    raise DataError(e.reason, path=e.path) from e


def _cause(error: BaseException) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


# The artifact's loader, written beside it as serve.py. It must import nothing but the
# standard library, numpy and jax.
LOADER_SOURCE = '''\
"""Runs a pico_jax serving artifact with jax and numpy only (no pico_jax needed).

  from serve import load
  predict = load("path/to/artifact")
  out = predict({"sparse": int32 [B, F], "dense": float32 [B, D], ...})
  out["p_ctr"], out["p_cvr"], out["p_ctcvr"]  # float32 [B]

  python serve.py ARTIFACT_DIR FEATURES.npz PREDICTIONS.npz
"""

import json
import os
import sys

import jax
import numpy as np


class ArtifactError(ValueError):
  """A file of the artifact is missing or damaged; ``path`` names it."""

  def __init__(self, path, reason):
    self.path, self.reason = path, reason
    super().__init__(f"{path}: {reason}")


def _read(path, read):
  try:
    return read(path)
  except Exception as e:
    cause = " ".join(str(e).split())[:200]
    raise ArtifactError(path, f"cannot be read ({type(e).__name__}: {cause}); "
                        "export the run again") from e


def _manifest(path):
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("format") != "pico_jax.serving/1":
    raise ValueError(f"unknown format {manifest.get('format')!r}")
  missing = [k for k in ("artifact", "params_file", "params", "inputs") if k not in manifest]
  if missing:
    raise ValueError(f"no {missing}")
  return manifest


def _exported(path):
  with open(path, "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


def load(artifact_dir):
  """Loads the artifact in ``artifact_dir``; returns ``predict(features) -> dict``.

  A missing or damaged file raises ArtifactError naming it.
  """
  manifest = _read(os.path.join(artifact_dir, "manifest.json"), _manifest)
  exported = _read(os.path.join(artifact_dir, manifest["artifact"]), _exported)

  def read_params(path):
    with np.load(path) as z:
      return [jax.device_put(z[p["key"]]) for p in manifest["params"]]
  params = _read(os.path.join(artifact_dir, manifest["params_file"]), read_params)
  inputs = manifest["inputs"]

  def predict(features):
    missing = [i["name"] for i in inputs if i["name"] not in features]
    if missing:
      raise ValueError(f"missing inputs {missing}; the model takes "
                       f"{[i['name'] for i in inputs]}")
    args, batch = {}, None
    for spec in inputs:
      x = np.asarray(features[spec["name"]])
      if x.dtype != np.dtype(spec["dtype"]):
        raise ValueError(f"input {spec['name']!r}: dtype {x.dtype}, expected {spec['dtype']}")
      if x.ndim != len(spec["shape"]) or list(x.shape[1:]) != spec["shape"][1:]:
        raise ValueError(f"input {spec['name']!r}: shape {list(x.shape)}, expected "
                         f"{spec['shape']}")
      if batch is not None and x.shape[0] != batch:
        raise ValueError(f"input {spec['name']!r}: batch {x.shape[0]}, others have {batch}")
      batch = x.shape[0]
      args[spec["name"]] = x
    out = exported.call(params, args)
    return {k: np.asarray(v) for k, v in out.items()}

  predict.manifest = manifest
  return predict


if __name__ == "__main__":
  if len(sys.argv) != 4:
    sys.exit(__doc__)
  predict = load(sys.argv[1])
  with np.load(sys.argv[2]) as z:
    features = {k: z[k] for k in z.files}
  np.savez(sys.argv[3], **predict(features))
'''
