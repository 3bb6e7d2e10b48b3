"""A TF SavedModel of the serving function with a raw-feature signature, for TF Serving.

Optional: needs ``pip install -e .[tf]`` (tensorflow-cpu). The signature
``serving_default`` takes one tensor [B] per raw feature column, named by the column,
and returns p_ctr, p_cvr and p_ctcvr (float32 [B]). The feature encoding runs inside
the graph, as ``Encoder.encode`` runs it in Python:

* a single-valued column (tf.string, or tf.int64 for integer ids): its vocabulary as a
  ``tf.lookup.StaticHashTable`` (unseen values -> id 0);
* a multi-valued column of format ``table`` (tf.string [B]): the values joined by the
  column's declared separator (empty tokens dropped), looked up, cut to the padded
  length L, with its mask;
* a dense column (tf.float64 [B]; a timestamp converted by the store's policy as
  epoch seconds): NaN (missing, where the store's policy is ``default``) becomes the
  training mean and sets the column's missing indicator where one was declared; then
  ``(x - mean) / std`` in float64, cast to float32; a column constant in the training
  rows is 0.

A missing sparse value is sent as a value the vocabulary lacks (an empty string, or an
empty list joined: ""), which is id 0, as a null is in the store.

The model itself is the ``jax.export`` serving function converted by
``jax.experimental.jax2tf`` (native serialization, a symbolic batch dimension). A
field hashed into buckets (its raw type is not recorded, and BLAKE2b is not a TF op)
and the key:value fields of ``aliccp_raw`` have no in-graph form: exporting them is a
DataError naming the field.
"""

from __future__ import annotations

import numpy as np

from pico_jax import batch as B
from pico_jax.data.errors import DataError
from pico_jax.serving.encoding import Encoding

SAVED_MODEL_DIR = "saved_model"
SIGNATURE = "serving_default"


def require_tensorflow() -> None:
  """ImportError with the install line unless tensorflow imports: asked before the slow
  work (restoring a run, lowering the model), not after it."""
  try:
    import tensorflow  # noqa: F401
  except ImportError:
    raise ImportError("a TF SavedModel needs tensorflow: pip install -e .[tf]") from None


def raw_inputs(encoding: Encoding) -> dict[str, str]:
  """The signature's inputs: raw column name -> TF dtype name ("string", "int64" or
  "float64"). Raises DataError for a field without an in-graph encoding."""
  enc, fmt = encoding.encoder, encoding.fmt
  separators = _separators(encoding)
  inputs = {}
  for name in enc.sparse_names + enc.multi_names:
    if name in enc.single_lists:
      raise DataError(f"field {name!r} is a key:value field of format {fmt.name}: the "
                      "TF SavedModel takes columns; export without --tf_saved_model")
    if name in enc.multi_names and name not in separators:
      raise DataError(f"multi-valued field {name!r} of format {fmt.name}: the TF "
                      "SavedModel takes format table's separator-joined columns only")
    vocab = enc.vocabs[name]
    if vocab.buckets or vocab.keys is None:
      raise DataError(f"field {name!r} is {'hashed' if vocab.buckets else 'empty'}: "
                      "the TF SavedModel needs its vocabulary's keys (and their type)")
    inputs[name] = "string" if vocab.keys.dtype.kind == "S" else "int64"
  for name in _read_dense(encoding):
    inputs[name] = "float64"
  return inputs


def _read_dense(encoding: Encoding) -> tuple[str, ...]:
  """The raw dense columns (format table's dense features less its missing indicators,
  which are computed from them)."""
  return getattr(encoding.fmt, "read_dense", encoding.encoder.dense_names)


def _separators(encoding: Encoding) -> dict[str, str]:
  """Per multi-valued column of format table, its declared separator."""
  roles = getattr(encoding.fmt, "roles", None)
  return dict(roles.multi) if roles is not None else {}


def save(serve_fn, flat_params, feature_names, encoding: Encoding, directory: str):
  """Writes the SavedModel of ``serve_fn(flat_params, features)`` (the jax serving
  function over the model inputs ``feature_names``) with the raw signature of
  ``encoding`` to ``directory``. Returns the signature's inputs (``raw_inputs``)."""
  inputs = raw_inputs(encoding)  # before the slow import: a refusal comes first.
  import tensorflow as tf
  from jax.experimental import jax2tf
  enc = encoding.encoder
  separators = _separators(encoding)
  module = tf.Module()
  module.params = [tf.Variable(p, trainable=False) for p in flat_params]
  module.tables = {name: _table(tf, enc.vocabs[name].keys)
                   for name in enc.sparse_names + enc.multi_names}
  model = jax2tf.convert(serve_fn, with_gradient=False, polymorphic_shapes=[
      None, {k: "(b, ...)" for k in feature_names}])
  read_dense = list(_read_dense(encoding))
  policy = getattr(encoding.fmt, "values", None)
  indicated = policy.missing_indicator if policy is not None else ()
  zeroed = enc.zeroed()
  mean, std = np.where(zeroed, 0.0, enc.mean), np.where(zeroed, np.inf, enc.std)

  def multi_valued(name, joined):
    tokens = tf.strings.split(joined, sep=separators[name])
    tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
    if inputs[name] == "int64":
      tokens = tf.strings.to_number(tokens, tf.int64)
    ids = tf.ragged.map_flat_values(module.tables[name].lookup, tokens[:, :enc.multi_len])
    shape = [None, enc.multi_len]
    return ids.to_tensor(0, shape=shape), tf.ones_like(ids, tf.bool).to_tensor(
        False, shape=shape)

  def encode(raw):
    features = {}
    if enc.sparse_names:
      features[B.SPARSE] = tf.stack([module.tables[n].lookup(raw[n])
                                     for n in enc.sparse_names], axis=1)
    if enc.multi_names:
      multi, mask = zip(*(multi_valued(n, raw[n]) for n in enc.multi_names))
      features[B.MULTI], features[B.MULTI_MASK] = tf.stack(multi, 1), tf.stack(mask, 1)
    if enc.dense_names:
      x = tf.stack([raw[n] for n in read_dense], axis=1)
      nan = tf.math.is_nan(x)
      indicators = [tf.cast(nan[:, read_dense.index(c)], tf.float64)[:, None]
                    for c in indicated]
      if enc.fill is not None:
        x = tf.where(nan, tf.constant(enc.fill[:len(read_dense)])[None, :], x)
      x = tf.concat([x, *indicators], axis=1)
      features[B.DENSE] = tf.cast((x - mean) / std, tf.float32)
    return {k: features[k] for k in feature_names}

  spec = {name: tf.TensorSpec([None], getattr(tf, dtype), name=name)
          for name, dtype in inputs.items()}

  @tf.function(input_signature=[spec], autograph=False)
  def serve_raw(raw):
    out = model(module.params, encode(raw))
    return {k: tf.identity(v, name=k) for k, v in out.items()}

  module.serve_raw = serve_raw
  tf.saved_model.save(module, directory, signatures={
      SIGNATURE: serve_raw.get_concrete_function()})
  return inputs


def _table(tf, keys: np.ndarray):
  """keys[i] -> i + 1, anything else -> 0 (``ingest.vocab.Vocab.lookup``)."""
  strings = keys.dtype.kind == "S"
  tf_keys = tf.constant(list(keys) if strings else keys, tf.string if strings else tf.int64)
  values = tf.range(1, len(keys) + 1, dtype=tf.int32)
  return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(tf_keys, values), 0)
