"""The joint CTR/CVR model with the PICO contrast head, assembled from the config."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from pico_jax.data.schema import Schema
from pico_jax.models import task_gradients
from pico_jax.models.backbones import build_backbone
from pico_jax.models.embeddings import FeatureEmbedding
from pico_jax.models.heads import TAU_MODES, ContrastHead, Tower
from pico_jax.models.transfer import TRANSFERS, InputTransfer, LogitTransfer, with_oracle

CONTRAST_MODES = ("none",) + TAU_MODES
COMPUTE_DTYPES = ("float32", "bfloat16")  # of the activations; params stay float32.
# What the contrast head projects: the towers' last hidden layers (PICO), or the
# backbone's per-task outputs, the towers' inputs (the towers then get no contrast
# gradient; only the backbone does).
CONTRAST_REPRESENTATIONS = ("towers", "backbone")
# The parameter subtree that exists for training only; serving never holds it.
CONTRAST_SCOPE = "contrast"


class PicoModel(nn.Module):
  """Embeddings -> backbone -> CTR and CVR towers [-> contrast head].

  ``__call__(features, train=False, with_contrast=True)`` returns a dict of float32
  arrays: ``ctr_logit``, ``cvr_logit``, ``p_ctr``, ``p_cvr``, ``p_ctcvr`` [B], and, when
  the model has a contrast head and ``with_contrast`` is set, ``z_ctr``, ``z_cvr``
  [B, proj_dim], ``tau``, ``relatedness_logit`` [B]. ``with_contrast=False`` is the
  serving path: it neither creates nor reads ``params["contrast"]``. ``embedding_rows``
  is passed to ``FeatureEmbedding`` as ``gathered`` (the lazy optimizer's touched rows).
  ``transfer`` (``config.model.transfer``) adds a gated stop-gradient CTR signal to the
  CVR tower and ``oracle_feature`` appends ``features["oracle_shared"]`` to its input
  (``pico_jax/models/transfer.py``); both serve as trained.
  """
  embedding: nn.Module
  backbone: nn.Module
  ctr_tower: nn.Module
  cvr_tower: nn.Module
  contrast: nn.Module | None = None
  contrast_representation: str = "towers"
  transfer: str = "none"  # one of transfer.TRANSFERS
  oracle_feature: bool = False

  @nn.compact  # the transfer modules are defined inline.
  def __call__(self, features, *, train: bool = False, with_contrast: bool = True,
               embedding_rows=None):
    e = self.embedding(features, embedding_rows)
    # A no-op unless a perturbation is passed: task_gradients.apply_model reads each
    # task logit's gradient at e through it (the gradient-agreement temperature).
    e = self.perturb(task_gradients.EMBEDDING, e)
    ctr_in, cvr_in = self.backbone(e, train=train)[:2]
    ctr_logit, h_ctr = self.ctr_tower(ctr_in, train=train)
    # The contrast and the transfer see the backbone's CVR output, before these inputs.
    cvr_tower_in = cvr_in
    if self.oracle_feature:
      cvr_tower_in = with_oracle(cvr_tower_in, features, initializing=self.is_initializing())
    if self.transfer == "ctr_representation":
      cvr_tower_in = InputTransfer(dtype=cvr_in.dtype, name="transfer")(cvr_tower_in, h_ctr)
    cvr_logit, h_cvr = self.cvr_tower(cvr_tower_in, train=train)
    if self.transfer == "ctr_logit":
      cvr_logit = LogitTransfer(dtype=h_cvr.dtype, name="transfer")(cvr_logit, h_cvr,
                                                                    ctr_logit)
    elif self.transfer not in TRANSFERS:
      raise ValueError(f"transfer={self.transfer!r}; expected one of {TRANSFERS}")
    p_ctr, p_cvr = nn.sigmoid(ctr_logit), nn.sigmoid(cvr_logit)
    out = dict(ctr_logit=ctr_logit, cvr_logit=cvr_logit, p_ctr=p_ctr, p_cvr=p_cvr,
               p_ctcvr=p_ctr * p_cvr)
    if with_contrast and self.contrast is not None:
      if self.contrast_representation == "backbone":
        h_ctr, h_cvr = ctr_in, cvr_in
      elif self.contrast_representation != "towers":
        raise ValueError(f"contrast_representation={self.contrast_representation!r}; "
                         f"expected one of {CONTRAST_REPRESENTATIONS}")
      z_ctr, z_cvr, tau, r = self.contrast(h_ctr, h_cvr, e, train=train)
      out.update(z_ctr=z_ctr, z_cvr=z_cvr, tau=tau, relatedness_logit=r)
    return out


def build_model(config: ml_collections.ConfigDict, schema: Schema) -> PicoModel:
  """Builds the model of ``config.model`` and ``config.contrast`` for ``schema``."""
  m, c = config.model, config.contrast
  dtype = jnp.dtype(m.compute_dtype)
  common = dict(layer_norm=m.layer_norm, dropout=m.dropout, dtype=dtype)
  contrast = None
  if c.mode != "none":
    contrast = ContrastHead(
        proj_dim=c.proj_dim, proj_hidden=tuple(c.proj_hidden), tau_mode=c.mode,
        tau_min=c.tau_min, tau_max=c.tau_max, tau_init=c.tau_init,
        relatedness_hidden=tuple(c.relatedness_hidden), relatedness_input=c.relatedness_input,
        relatedness_stop_gradient=c.relatedness_stop_gradient, detach=c.detach, dtype=dtype)
  return PicoModel(
      embedding=FeatureEmbedding(schema, m.embed_dim, m.dense_dim, m.pooling,
                                 m.vocab_pad_multiple, dtype=dtype),
      backbone=build_backbone(m, dtype),
      ctr_tower=Tower(tuple(m.tower_hidden), **common),
      cvr_tower=Tower(tuple(m.tower_hidden), **common),
      contrast=contrast,
      contrast_representation=c.representation,
      transfer=m.transfer,
      oracle_feature=m.oracle_feature,
  )


def serving_params(params):
  """The parameters the serving path reads: ``params`` without the contrast subtree."""
  return {k: v for k, v in params.items() if k != CONTRAST_SCOPE}
