"""Runs a pico_jax serving artifact with jax and numpy only (no pico_jax needed).

  from serve import load
  predict = load("path/to/artifact")
  out = predict({"sparse": int32 [B, F], "dense": float32 [B, D], ...})
  out["p_ctr"], out["p_cvr"], out["p_ctcvr"]  # float32 [B]

  python serve.py ARTIFACT_DIR FEATURES.npz PREDICTIONS.npz

The inputs are encoded features (ids, standardized dense values); scoring raw rows
needs the artifact's feature encoding, which ``pico_jax.export.load`` applies. Every
file of the artifact is checked against the SHA-256 its manifest records before it is
used, and the manifest against its own checksum. This file is code: read it before
you run it (``pico_jax.export.load`` runs pico_jax's own copy, never this one).
"""

import hashlib
import json
import os
import sys

import jax
import numpy as np

FORMAT = "pico_jax.serving/2"
MANIFEST = "manifest.json"
CHECKSUM = "checksum"  # the manifest's own SHA-256, of its other keys.


class ArtifactError(ValueError):
  """A file of the artifact is missing or damaged; ``path`` names it."""

  def __init__(self, path, reason):
    self.path, self.reason = path, reason
    super().__init__(f"{path}: {reason}")


# SHA-256 from hashlib, not data.integrity's BLAKE3: this file must run with jax and numpy only.
def file_entry(path):
  """{"bytes": size, "sha256": hex} of the file at ``path``."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for piece in iter(lambda: f.read(1 << 20), b""):
      digest.update(piece)
  return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def manifest_checksum(manifest):
  """SHA-256 of the manifest without its checksum, as canonical JSON."""
  body = {k: v for k, v in manifest.items() if k != CHECKSUM}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                        .encode()).hexdigest()


def read_manifest(artifact_dir):
  """The artifact's manifest, checked against its checksum and format."""
  path = os.path.join(artifact_dir, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    cause = " ".join(str(e).split())[:200]
    raise ArtifactError(path, f"cannot be read ({type(e).__name__}: {cause}); "
                        "export the run again") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else None
    raise ArtifactError(path, f"an artifact of format {found!r}, not {FORMAT}; "
                        "export the run again with this version")
  if manifest.get(CHECKSUM) != manifest_checksum(manifest):
    raise ArtifactError(path, "changed since it was exported (its checksum does not "
                        "match its content); export the run again")
  return manifest


def verify_files(artifact_dir, manifest):
  """Raises ArtifactError naming the first file whose size or SHA-256 differs from
  the manifest's record (or that is missing)."""
  for name, entry in sorted(manifest["files"].items()):
    path = os.path.join(artifact_dir, *name.split("/"))
    try:
      found = file_entry(path)
    except OSError as e:
      raise ArtifactError(path, f"cannot be read ({e.strerror or e}); export the run "
                          "again") from None
    if found != {"bytes": entry["bytes"], "sha256": entry["sha256"]}:
      raise ArtifactError(path, "changed since it was exported (its size or SHA-256 "
                          "differs from manifest.json); export the run again")


def load(artifact_dir):
  """Loads the artifact in ``artifact_dir``; returns ``predict(features) -> dict``
  (float32 [B] arrays), with the manifest as ``predict.manifest``.

  A missing or damaged file raises ArtifactError naming it.
  """
  manifest = read_manifest(artifact_dir)
  verify_files(artifact_dir, manifest)
  with open(os.path.join(artifact_dir, manifest["artifact"]), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with np.load(os.path.join(artifact_dir, manifest["params_file"])) as z:
    params = [jax.device_put(z[p["key"]]) for p in manifest["params"]]
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
