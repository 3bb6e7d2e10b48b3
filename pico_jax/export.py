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
import shutil

import jax
import numpy as np

from pico_jax import calibration
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema
from pico_jax.models import serving_params
from pico_jax.serving import serve
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
  shutil.copyfile(serve.__file__, os.path.join(output_dir, LOADER_FILE))
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
