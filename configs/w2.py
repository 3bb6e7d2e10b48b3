"""W2 (docs/benchmarks.md): the AliExpress-shaped MMoE throughput workload.

16 categorical fields (vocabularies up to 500,000, ``benchmarks/w2.py``), 63 dense
features, embedding 128, MMoE with 8 experts [512, 256], towers [128, 64], Adam 1e-3
(lazy for the embedding table), batch 2048 (the benchmark also runs 4096). ``dense_dim = 63`` keeps the backbone input
at 16 * 128 + 63 = 2111 features, the width of the PyTorch peer that concatenates the
raw dense features. The data is synthetic (``benchmarks/w2.py``):

  python benchmarks/train_throughput.py            # uses this config

PICO is on (personalized tau); ``--config.contrast.mode=none`` is the backbone alone.
"""

from configs import default


def get_config():
  c = default.get_config()
  # The throughput workload is PICO with the personalised temperature (BENCHMARKS.md),
  # whatever the recipe's default contrast.
  c.contrast.mode = "personalized"
  c.model.embed_dim = 128
  c.model.dense_dim = 63
  c.model.backbone = "mmoe"
  c.model.mmoe.num_experts = 8
  c.model.mmoe.expert_hidden = (512, 256)
  c.model.tower_hidden = (128, 64)
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  # Adam for the table's touched rows only (pico_jax/train/sparse_optimizer.py); the
  # benchmark's --embedding_optimizers=dense runs the dense Adam of the peers.
  c.optimizer.embedding_optimizer = "lazy_adam"
  c.train.batch_size = 2048
  c.checkpoint.enabled = False
  return c
