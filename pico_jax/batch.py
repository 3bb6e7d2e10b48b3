"""The batch contract: the one place where batch keys, shapes and dtypes are defined.

A batch is a flat ``dict[str, np.ndarray | jax.Array]``. B is the (local or global)
batch size, F the number of single-valued sparse fields, G the number of multi-valued
sparse fields, L their padded list length, D the number of dense features.

Model inputs (``FEATURE_KEYS``):
  ``sparse``      int32   [B, F]     field-local ids; 0 = unseen / rare.
  ``multi``       int32   [B, G, L]  field-local ids of multi-valued fields, padded.
  ``multi_mask``  bool    [B, G, L]  True where ``multi`` holds a real id.
  ``dense``       float32 [B, D]     standardised dense features.
Labels (never features):
  ``click``       float32 [B]        y in {0, 1}.
  ``conversion``  float32 [B]        c in {0, 1}, c = 1 implies y = 1.
Bookkeeping:
  ``mask``        float32 [B]        1 for real rows, 0 for padding rows that fill the
                                     last evaluation batch; every loss and metric is
                                     weighted by it.
Optional extras (evaluation and analysis only, never model inputs):
  ``segment``     int32   [B]        synthetic segment (ground-truth relatedness group).
  ``group``       int32   [B]        grouping key for GAUC (user id, search id).
  ``p_ctr_true``  float32 [B]        synthetic ground-truth click probability.
  ``p_cvr_true``  float32 [B]        synthetic ground-truth conversion-given-click prob.
  ``r_true``      float32 [B]        positive-control ground-truth relatedness r(x).
Oracle input (positive-control data only; read by the model only when
``config.model.oracle_feature`` is set, the test bed's upper bound, never a default):
  ``oracle_shared`` float32 [B]      the true standardised shared factor <a_u, b_i>.

Only the keys a dataset has are present: a dataset without multi-valued fields has no
``multi``/``multi_mask``, one without dense features has no ``dense``.
"""

SPARSE = "sparse"
MULTI = "multi"
MULTI_MASK = "multi_mask"
DENSE = "dense"
CLICK = "click"
CONVERSION = "conversion"
MASK = "mask"
SEGMENT = "segment"
GROUP = "group"
P_CTR_TRUE = "p_ctr_true"
P_CVR_TRUE = "p_cvr_true"
R_TRUE = "r_true"
ORACLE_SHARED = "oracle_shared"

FEATURE_KEYS = (SPARSE, MULTI, MULTI_MASK, DENSE)
ORACLE_KEYS = (ORACLE_SHARED,)


def features(batch):
  """The model inputs of ``batch`` (labels and extras removed; an oracle input is kept,
  and the model ignores it unless ``config.model.oracle_feature`` is set)."""
  return {k: v for k, v in batch.items() if k in FEATURE_KEYS + ORACLE_KEYS}
