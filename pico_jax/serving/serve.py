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
