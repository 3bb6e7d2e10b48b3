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
  encoding.npz        the feature encoding's arrays (vocabulary keys, dense
                      statistics), when the run trained on a store built from raw
                      files; its plain part is the manifest's ``encoding``.
  manifest.json       format, inputs (name, shape with "batch" for the batch dimension,
                      dtype), outputs, params (name, key, shape, dtype), num_params,
                      platforms, the jax version, the training step, the config (without
                      absolute paths), ``store`` (the training store's fingerprint; null
                      for a store built before fingerprints), ``encoding`` (format,
                      preprocessing options, the ``Encoder``'s fields; null without a
                      store), ``files`` (bytes and SHA-256 of every other file) and
                      ``checksum`` (its own SHA-256, of the other keys).
  serve.py            a loader that needs only jax and numpy (encoded features in,
                      probabilities out): ``from serve import load``; it is code, to be
                      read before it is run.

``load(DIR)`` loads an artifact with pico_jax's own code (``pico_jax.serving.serve``,
of which serve.py is a copy; nothing in the artifact is run), after checking every file
against the manifest; ``Artifact.score`` scores raw rows (a file, an Arrow table or a
pandas DataFrame) with nothing but the artifact. An export is staged beside its output
and renamed into place (``pico_jax.serving.staging``).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np

from pico_jax import calibration
from pico_jax.data import integrity, store
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema
from pico_jax.ingest import blocks
from pico_jax.models import serving_params
from pico_jax.serving import saved_model, serve, staging
from pico_jax.serving.encoding import Encoding
from pico_jax.train.state import example_features

ARTIFACT_FILE = "serving.jax_export"
PARAMS_FILE = "params.npz"
ENCODING_FILE = "encoding.npz"
MANIFEST_FILE = serve.MANIFEST
LOADER_FILE = "serve.py"
FORMAT = serve.FORMAT
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
  def fn(params, features):
    out = model.apply({"params": params}, features, train=False, with_contrast=False)
    out = {k: out[k] for k in OUTPUTS}
    if pos_weight_loss is not None:
      out = calibration.correct_predictions(out, pos_weight_loss)
    return out
  return fn


def num_params(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))




def export_model(model, params, schema: Schema, output_dir: str, *,
                 platforms=DEFAULT_PLATFORMS, step: int | None = None,
                 config=None, correct_pos_weight: bool = False,
                 encoding: Encoding | None = None, tf_saved_model: bool = False) -> dict:
  """Writes the serving artifact of ``model`` with ``params`` to ``output_dir``.

  Args:
    model: the trained ``PicoModel``.
    params: its (training) params; the contrast subtree is dropped here.
    schema: the dataset schema (input names and shapes).
    output_dir: staged beside it and renamed into place; an artifact already there is
      replaced, any other non-empty directory is a DataError.
    platforms: lowering platforms of the artifact.
    step, config: recorded in the manifest (the config without absolute paths).
    correct_pos_weight: serve probabilities corrected for ``config.loss.pos_weight``
      (``pico_jax.calibration``); recorded in the manifest.
    encoding: the feature encoding of the training store (``serving.encoding``), so
      the artifact scores raw rows; None: it scores encoded features only.
    tf_saved_model: also write a TF SavedModel with a raw-feature signature
      (``serving.saved_model``; needs tensorflow and ``encoding``).
  Returns:
    The manifest (as written).
  """
  host = jax.tree.map(np.asarray, jax.device_get(serving_params(params)))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(host)
  names = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in leaves]
  arrays = [np.asarray(x) for _, x in leaves]
  if correct_pos_weight and config is None:
    raise ValueError("export: correct_pos_weight needs the config (its loss.pos_weight)")
  if tf_saved_model:  # refused before the lowering, not after it.
    saved_model.require_tensorflow()
    if encoding is None:
      raise DataError("a TF SavedModel takes raw rows: its run must have trained on a "
                      "store built from raw files")
    saved_model.raw_inputs(encoding)
  fn = serving_function(model, config.loss if correct_pos_weight else None)

  def flat_serve(flat_params, features):
    return fn(jax.tree.unflatten(treedef, flat_params), features)

  (batch,) = jax.export.symbolic_shape(BATCH_DIM)
  example = example_features(schema, batch_size=1)
  feature_specs = {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype)
                   for k, v in example.items()}
  param_specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
  exported = jax.export.export(jax.jit(flat_serve), platforms=tuple(platforms))(
      param_specs, feature_specs)
  keys = [f"p{i:04d}" for i in range(len(arrays))]
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
      "config": _without_paths(config.to_dict()) if config is not None else None,
      "store": _store_record(config, encoding),
      "encoding": None,
      "saved_model": None,
  }
  with staging.staged_directory(output_dir, _is_artifact) as out:
    with open(os.path.join(out, ARTIFACT_FILE), "wb") as f:
      f.write(exported.serialize())
    np.savez(os.path.join(out, PARAMS_FILE), **dict(zip(keys, arrays)))
    if encoding is not None:
      manifest["encoding"], encoded = encoding.to_plain()
      np.savez(os.path.join(out, ENCODING_FILE), **encoded)
    shutil.copyfile(serve.__file__, os.path.join(out, LOADER_FILE))
    if tf_saved_model:
      inputs = saved_model.save(flat_serve, arrays, list(example), encoding,
                                os.path.join(out, saved_model.SAVED_MODEL_DIR))
      manifest["saved_model"] = {"directory": saved_model.SAVED_MODEL_DIR,
                                 "signature": saved_model.SIGNATURE, "inputs": inputs}
    manifest["files"] = {name: serve.file_entry(os.path.join(out, *name.split("/")))
                         for name in _files_below(out)}
    manifest = json.loads(json.dumps(manifest, default=_json_default))
    manifest[serve.CHECKSUM] = serve.manifest_checksum(manifest)
    with open(os.path.join(out, MANIFEST_FILE), "w") as f:
      json.dump(manifest, f, indent=2)
  return manifest


def export_run(workdir: str, output_dir: str | None = None, *,
               checkpoint: str | None = None, platforms=DEFAULT_PLATFORMS,
               correct_pos_weight: bool = False, tf_saved_model: bool = False
               ) -> tuple[str, dict, int]:
  """Exports checkpoint ``checkpoint`` of the run in ``workdir`` (``train.restore``'s
  choices; None: its default, the best step where the run recorded one, logged) with its
  training store's feature encoding: (the artifact directory
  (default ``WORKDIR/export/step_<STEP>``), its manifest, the trained params' count,
  contrast head included)."""
  from pico_jax.serving.encoding import for_run
  from pico_jax.train.restore import DEFAULT, restore
  from pico_jax.workdir import export_dir
  if tf_saved_model:  # before the run is restored.
    saved_model.require_tensorflow()
  r = restore(workdir, checkpoint or DEFAULT)
  output = output_dir or export_dir(workdir, r.resumed_step)
  manifest = export_model(r.model, r.state.params, r.schema, output, platforms=platforms,
                          step=r.resumed_step, config=r.config,
                          correct_pos_weight=correct_pos_weight,
                          encoding=for_run(r.config), tf_saved_model=tf_saved_model)
  return output, manifest, num_params(r.state.params)


def _files_below(root: str) -> list[str]:
  """Every file below ``root``, as sorted relative paths joined with "/"."""
  return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                for d, _, files in os.walk(root) for f in files)


def _is_artifact(path: str) -> bool:
  """Whether ``path`` holds a serving artifact (of any version), which an export may
  replace."""
  try:
    with open(os.path.join(path, MANIFEST_FILE)) as f:
      return str(json.load(f).get("format", "")).startswith("pico_jax.serving/")
  except (OSError, ValueError, AttributeError):
    return False


def _store_record(config, encoding: Encoding | None) -> dict | None:
  """The manifest's ``store``: the training store's fingerprint (null for a store
  built before fingerprints); None when the run trained on no store."""
  if encoding is not None:
    return {"fingerprint": encoding.fingerprint}
  if config is None or config.data.name != "store":
    return None
  return {"fingerprint": store.read_meta(config.data.path).get(integrity.FINGERPRINT)}


def _without_paths(tree):
  """``tree`` with every absolute path replaced by None: an artifact names no place on
  the machine it was exported on."""
  if isinstance(tree, dict):
    return {k: _without_paths(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_without_paths(v) for v in tree]
  if isinstance(tree, str) and os.path.isabs(tree):
    return None
  return tree


def _json_default(x):
  if isinstance(x, tuple):
    return list(x)
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"manifest: cannot write {type(x).__name__} {x!r} as JSON")


def load(artifact_dir: str) -> "Artifact":
  """The artifact in ``artifact_dir``, loaded with pico_jax's own code.

  Raises DataError naming the file when a file of the artifact is missing, damaged
  (its size or SHA-256 differs from the manifest's) or of another format.
  """
  try:
    predict = serve.load(artifact_dir)
  except serve.ArtifactError as e:
    raise DataError(e.reason, path=e.path) from None
  encoding = None
  plain = predict.manifest["encoding"]
  if plain is not None:
    with np.load(os.path.join(artifact_dir, ENCODING_FILE), allow_pickle=False) as z:
      encoding = Encoding.from_plain(plain, {k: z[k] for k in z.files},
                                     predict.manifest["store"]["fingerprint"])
  return Artifact(artifact_dir, predict, encoding)


class Artifact:
  """A loaded serving artifact. Call it on encoded features (``serve.py``'s
  ``predict``), or ``score`` raw rows.

  Attributes:
    directory: where it was loaded from.
    manifest: its manifest.json.
    encoding: its feature encoding (``serving.encoding.Encoding``), or None when its
      run trained on data not built from raw files.
  """

  def __init__(self, directory: str, predict, encoding: Encoding | None):
    self.directory, self._predict, self.encoding = directory, predict, encoding
    self.manifest = predict.manifest

  def __call__(self, features: dict) -> dict:
    """{p_ctr, p_cvr, p_ctcvr}: float32 [B] of encoded ``features`` (the model inputs
    of ``manifest["inputs"]``)."""
    return self._predict(features)

  def predict_columns(self, columns: dict, batch_size: int = 4096) -> dict:
    """``self(columns)`` in fixed-size batches (the last padded with row 0), so the
    model compiles once whatever the row count; extra keys are ignored."""
    names = [i["name"] for i in self.manifest["inputs"]]
    n = len(columns[names[0]])
    out = {k: [] for k in OUTPUTS}
    for start in range(0, n, batch_size):
      rows = np.arange(start, start + batch_size)
      rows = np.where(rows < n, rows, 0)
      got = self({k: columns[k][rows] for k in names})
      for k in OUTPUTS:
        out[k].append(got[k][:min(batch_size, n - start)])
    return {k: np.concatenate(v) if v else np.zeros(0, np.float32)
            for k, v in out.items()}

  def raw_encoding(self) -> Encoding:
    """The feature encoding; DataError naming the manifest when there is none."""
    if self.encoding is None:
      raise DataError("holds no feature encoding (its run trained on data not built "
                      "from raw files): it scores encoded features only",
                      path=os.path.join(self.directory, MANIFEST_FILE))
    return self.encoding

  def score(self, rows, *, batch_size: int = 4096,
            chunk_rows: int = blocks.CHUNK_ROWS) -> dict:
    """{p_ctr, p_cvr, p_ctcvr}: float32 [N] of raw rows, in order.

    ``rows``: a file of the run's format (a path, or a list of them; format ``table``:
    a CSV or Parquet file, glob or partitioned directory), or for format ``table`` a
    pyarrow Table or pandas DataFrame with the table's columns (labels optional).
    Raises DataError naming file, line and column of a bad value (as preprocessing).
    """
    encoding = self.raw_encoding()
    opened = encoding.open(rows if isinstance(rows, (list, tuple)) else [rows])
    scored = []
    for source, layout in opened:
      for chunk, columns in encoding.read(source, layout, chunk_rows):
        if chunk is not None:
          scored.append(self.predict_columns(columns, batch_size))
    return {k: np.concatenate([s[k] for s in scored]) if scored
            else np.zeros(0, np.float32) for k in OUTPUTS}
