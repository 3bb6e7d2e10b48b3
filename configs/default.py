"""Default recipe: embedded synthetic data, MMoE backbone, no contrast. PICO is one flag
away, ``--config.contrast.mode=fixed``: a fixed temperature 1.0 at lambda 0.1 (the
recipe of RESULTS.md section 6). It was the default until its gain failed to replicate
on fresh seeds (sections 7 and 8; README "When does PICO help?").

  python launch/train.py --config=configs/default.py --workdir=/tmp/pico
  python launch/train.py --config=configs/default.py --config.model.backbone=ple \
      --config.train.steps=200

Every key that any recipe may set exists here; other recipes start from this one and
override values, so an unknown key fails at start wherever it is given.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"  # synthetic | store (a columnar store at data.path)
  c.data.path = ""
  c.data.eval_split = "val"  # split evaluated during training; test is evaluated at the end.
  c.data.prefetch = 4
  # Global batches placed on the devices ahead of the step by a background thread
  # (Grain's thread prefetch, pipeline.train_iterator); 0: placed when the step needs it.
  c.data.device_prefetch = 0
  c.data.num_threads = 2
  # Each checkpoint records the fingerprint of its data; resuming or evaluating it on
  # other data (a store rebuilt at the same path) is refused unless this is True:
  # continue training (or evaluate) on the new data, on purpose.
  c.data.allow_new_data = False
  # A sharded store (launch/preprocess.py --num_shards) is streamed: rows held in its
  # shuffle window, and its order: shuffle | time (partitions in order, window only).
  c.data.shuffle_window = 65_536
  c.data.order = "shuffle"
  # Each shard checked against its BLAKE3 on its first read in a process (one more
  # sequential read of it per run: BENCHMARKS.md "Sharded reader").
  c.data.verify_shards = True
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_rows=500_000, num_users=1_000, num_items=500, num_categories=32,
      rho=(0.0, 0.33, 0.67, 1.0), latent_dim=4, signal=1.5, ctr_bias=-1.5, cvr_bias=-1.0,
      history_len=4, dense_noise=0.2, val_fraction=0.1, test_fraction=0.1))
  # kind: default (the generator above) | positive_control (pico_jax/data/positive_control.py,
  # the test bed where transfer is known to help or not; its settings below, which the
  # default kind ignores; shares: scores | representations, whether conversion shares the
  # click's score or only its latents). seed: the generator's seed, separate from
  # config.seed (model init and data order); -1 follows config.seed (one seed makes the
  # whole run).
  c.data.synthetic.kind = "default"
  c.data.synthetic.seed = -1
  c.data.synthetic.positive_control = ml_collections.ConfigDict(dict(
      relatedness="one", shares="scores", conversions_per_click=0.02, nuisance_scale=0.5,
      num_rows=100_000, num_users=300, num_items=200, num_categories=16, latent_dim=4,
      signal=1.5, ctr_bias=-1.5, val_fraction=0.1, test_fraction=0.1))

  c.model = ml_collections.ConfigDict()
  c.model.embed_dim = 16
  c.model.dense_dim = 16
  c.model.pooling = "sum"  # multi-valued fields: sum | mean
  c.model.vocab_pad_multiple = 256  # embedding rows padded so the table shards evenly.
  c.model.backbone = "mmoe"  # a name of pico_jax/models/backbones.py BACKBONES
  # Each backbone's settings, under its name: the fields of its module.
  c.model.shared_bottom = ml_collections.ConfigDict(dict(hidden=(64,)))
  c.model.mmoe = ml_collections.ConfigDict(dict(num_experts=8, expert_hidden=(64,)))
  c.model.ple = ml_collections.ConfigDict(dict(
      num_levels=1, num_shared_experts=4, num_task_experts=4, expert_hidden=(64,)))
  # AITM (pico_jax/models/backbones.py): each task's network; its last width is also the
  # width of the CTR -> CVR transfer and its attention.
  c.model.aitm = ml_collections.ConfigDict(dict(bottom_hidden=(64,)))
  c.model.tower_hidden = (32,)
  c.model.layer_norm = False
  c.model.dropout = 0.0
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)
  # Explicit transfer into the CVR tower (pico_jax/models/transfer.py): none |
  # ctr_logit | ctr_representation, a stop-gradient CTR signal behind a learned gate
  # that starts at 0 (so training starts as none).
  c.model.transfer = "none"
  # The test bed's upper bound only: the CVR tower also reads the true shared factor
  # (batch key oracle_shared, positive_control data). Never on outside that test bed.
  c.model.oracle_feature = False

  c.contrast = ml_collections.ConfigDict()
  # none | fixed | global | personalized. none by section 8's pre-registered rule: on 20
  # fresh seeds fixed tau 1.0 at lambda 0.1 gained +0.009 [-0.004, +0.021] over none
  # (MDE80 0.017), where sections 6 and 7 had seen +0.019 and +0.000. That recipe (chosen
  # on realised validation CVR AUC among lambda {0.01, 0.03, 0.1} x tau {0.1, 0.2, 0.6,
  # 1.0}) is what mode=fixed gives with the weight and tau_init below. personalized
  # (with any tau_gradient) beat neither the fixed tau nor its own shuffled control
  # (section 6).
  c.contrast.mode = "none"
  c.contrast.weight = 0.1  # lambda, when a mode other than none is set
  c.contrast.proj_dim = 32
  c.contrast.proj_hidden = (32,)
  c.contrast.tau_min = 0.05
  c.contrast.tau_max = 1.0
  # The fixed tau, and the start of learned ones (which must start strictly inside
  # (tau_min, tau_max): set e.g. 0.2 with mode global or personalized).
  c.contrast.tau_init = 1.0
  c.contrast.relatedness_hidden = (32,)
  c.contrast.relatedness_input = "embedding"  # embedding | towers
  c.contrast.relatedness_stop_gradient = True
  c.contrast.symmetric = True
  c.contrast.normalize = True
  c.contrast.negatives = "global"  # global (whole global batch) | local (own shard only)
  # How the in-batch contrast is computed (pico_jax/contrast): auto | xla (exact, B x B
  # memory) | chunked (streaming logsumexp, B x chunk_size) | pallas (fused kernel,
  # O(B proj_dim); interpret mode on CPU). auto: xla on CPU, or chunked when
  # chunk_size > 0 (a memory bound); pallas on GPU/TPU once its self-check passes
  # (else chunked when chunk_size > 0, else xla, with a warning).
  c.contrast.implementation = "auto"
  c.contrast.chunk_size = 0  # the chunk of "chunked" (0: largest divisor of B <= 1024).
  # Optional supervision of the relatedness logit by label agreement (y == c).
  c.contrast.relatedness_supervision_weight = 0.0
  # Temperature remedies (RESULTS.md section 3). tau_gradient: contrast (tau is also
  # trained by the InfoNCE, which drives it to tau_min) | supervision (stop_gradient of
  # tau inside the InfoNCE: only the supervision and the prior below train it; needs one
  # of them) | gradient_agreement (stop_gradient of tau inside the InfoNCE; the
  # relatedness network is regressed onto the agreement of the CTR and CVR task
  # gradients at each instance, docs/method.md section 4.1). tau_prior_weight > 0 pulls
  # the batch-mean tau to tau_prior. The remedies stay off
  # by default: neither orders tau by relatedness at every scarcity level of the map
  # (supervision does only when conversions are common; the prior orders it backwards).
  c.contrast.tau_gradient = "contrast"
  # The tau of the InfoNCE (training only): learned (the model's) | oracle (from the
  # positive control's true relatedness, an upper bound) | shuffled (the model's,
  # permuted across the batch: the control of per-instance variation).
  c.contrast.tau_source = "learned"
  c.contrast.tau_prior_weight = 0.0
  c.contrast.tau_prior = 0.2
  # Transfer options (RESULTS.md section 3). representation: towers (the towers' last
  # hidden layers, PICO) | backbone (the towers' inputs). detach: none | ctr | cvr, the
  # side whose representation the contrast may not move.
  c.contrast.representation = "towers"
  c.contrast.detach = "none"

  # cvr_rows: "clicked" (entire-space data: CVR is defined on clicks) or "all" (two
  # independent tasks, such as Census income / never-married).
  c.loss = ml_collections.ConfigDict(dict(ctr_weight=1.0, ctcvr_weight=1.0, cvr_weight=0.0,
                                          cvr_rows="clicked"))
  # Positive-class weight of each BCE (rare labels). Predictions then overstate the
  # rates; pico_jax/calibration.py maps them back (evaluate/export option).
  c.loss.pos_weight = ml_collections.ConfigDict(dict(ctr=1.0, ctcvr=1.0, cvr=1.0))
  # AITM's behavioural expectation calibrator, max(p_later - p_ctr, 0); zero under the
  # ESMM factorisation (see pico_jax.losses.calibrator_penalty).
  c.loss.calibrator_weight = 0.0

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      grad_clip_norm=0.0,
      # The embedding table's optimizer: dense (the one above) | lazy_adam | lazy_adagrad
      # (row-sparse: only the rows a batch touches are read and written; see
      # pico_jax/train/sparse_optimizer.py).
      embedding_optimizer="dense",
      # Learning-rate schedule (pico_jax/train/optimizer.py): constant | warmup_cosine |
      # warmup_linear: a linear warmup from 0 over warmup_steps to learning_rate, then a
      # decay to 0 at step decay_steps (0: train.steps), warmup included.
      schedule="constant", warmup_steps=0, decay_steps=0))

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 512  # global
  c.train.steps = 3_000
  c.train.log_every = 100
  c.train.eval_every = 1_000
  c.train.eval_batch_size = 4_096
  # Early stopping on a metric of the eval split ('' = off; e.g. mean_auc, ctcvr_logloss):
  # stop after `patience` evaluations without improvement; test scores the best params.
  c.train.early_stopping_metric = ""
  c.train.patience = 2
  # Also score the test split by the pCTR baselines of the tested params (ctr_as_cvr,
  # and blend with its weight fitted on data.eval_split; pico_jax/scorings.py).
  c.train.baseline_scorings = False

  # Orbax checkpoints in workdir/checkpoints, written asynchronously every every_steps
  # and at the end. Kept: the last `keep` and the `keep_best` best. "Best" is defined
  # once (pico_jax/train/checkpoint.py, best_criterion): best_metric ("<split>/<metric>") when
  # set, else the early-stopping metric of data.eval_split, else its mean_auc; losses
  # are minimised, other metrics maximised.
  c.checkpoint = ml_collections.ConfigDict(dict(
      enabled=True, every_steps=1_000, keep=2, best_metric="", keep_best=1))

  # Devices: mesh.data * mesh.model must equal the device count; -1 takes the rest.
  # fsdp: also split every dense parameter over `data` (its largest divisible axis);
  # the default replicates them.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1, fsdp=False))
  # Logical parameter axis -> mesh axis (None: replicated). The embedding table's rows
  # are split over every device; its lookup never moves the table (see
  # pico_jax.models.embeddings.sharded_lookup).
  c.axis_rules = (("vocab", ("data", "model")), ("embed", None), ("mlp_in", None),
                  ("mlp_out", None), ("expert", None))
  return c
