"""The store's layout once pass 1 has counted every row, shared by the local build
(``preprocess``) and the distributed one (``distributed``): where every kept row goes,
each field's vocabulary, the fields' places (``Fields``) and what meta.json records of
the build (``store_facts``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np

from pico_jax import batch as B
from pico_jax.data.errors import DataError
from pico_jax.data.schema import Schema, SparseField
from pico_jax.ingest import compiled
from pico_jax.ingest.encode import Encoder, column_roles
from pico_jax.ingest.splits import SPLIT_ID
from pico_jax.ingest.vocab import Vocab, build_vocab

if TYPE_CHECKING:
  from pico_jax.ingest.preprocess import Options

PREPROCESS_VERSION = 1


def positions(keep, split_of, rank_of, inputs) -> tuple[np.ndarray, dict[str, int]]:
  """Where every kept row goes: its index in its split (int64 [N]; rows not kept are
  left unset), and the rows of every split. Raises DataError for an empty split."""
  position, rows = compiled.split_positions(split_of, rank_of, keep)
  split_rows = {split: int(rows[sid]) for split, sid in SPLIT_ID.items()}
  for split, n in split_rows.items():
    if not n:
      raise DataError(f"split {split!r} has no rows (inputs: {list(inputs)}); give a "
                      f"{split} file or a fraction for it")
  return position, split_rows


def vocabulary(keys: np.ndarray | None, key_counts: np.ndarray, options: Options,
               buckets: int) -> tuple[Vocab, dict]:
  """One field's Vocab and meta.json entry from its training counts
  (``vocab.Counter.result()``); ``buckets`` > 0 hashes it."""
  v = build_vocab(keys, key_counts, min_count=options.min_count, buckets=buckets,
                  max_size=options.max_vocab)
  return v, {"kind": "hash" if v.buckets else "table", "size": v.vocab_size,
             "train_distinct": 0 if keys is None else len(keys)}


@dataclasses.dataclass(frozen=True)
class Fields:
  """Where the feature fields go in the store, once pass 1 has seen every row.

  Attributes:
    sparse_names: single-valued fields in schema order (the format's sparse columns,
      then the key:value fields no row repeats: ``single_lists``).
    multi_names: multi-valued fields; ``multi_len`` their padded length L.
    dense_names: the dense columns; ``extras``: the extra batch keys (group).
  """
  sparse_names: tuple[str, ...]
  single_lists: tuple[str, ...]
  multi_names: tuple[str, ...]
  multi_len: int
  dense_names: tuple[str, ...]
  extras: tuple[str, ...]

  @classmethod
  def of(cls, fmt, options: Options, max_mult: dict[str, int]) -> "Fields":
    """From the largest multiplicity of every key:value field (pass 1)."""
    multi_names = tuple(n for n in fmt.list_names
                        if max_mult[n] > 1 or n in options.multi_fields)
    single_lists = tuple(n for n in fmt.list_names if n not in multi_names)
    multi_len = min(max((max_mult[n] for n in multi_names), default=1),
                    options.multi_max_len)
    multi_len = max(multi_len, 2) if multi_names else 1  # max_len > 1 marks multi-valued.
    return cls(fmt.sparse_names + single_lists, single_lists, multi_names, multi_len,
               fmt.dense_names, (B.GROUP,) if fmt.group_name else ())

  def schema(self, size: Callable[[str], int]) -> Schema:
    """The store's schema, ``size(name)`` the vocabulary size of field ``name``."""
    return Schema(sparse=tuple(SparseField(n, size(n)) for n in self.sparse_names),
                  multi=tuple(SparseField(n, size(n), self.multi_len)
                              for n in self.multi_names),
                  dense=self.dense_names, extras=self.extras)

  def vocab_file(self, name: str) -> str:
    """The store's file of field ``name``'s table vocabulary."""
    return f"vocab/{(self.sparse_names + self.multi_names).index(name):03d}.npy"

  def vocab_files(self, vocabs: dict[str, Vocab], vocab_meta: dict[str, dict]
                  ) -> dict[str, np.ndarray]:
    """{relative path: sorted raw keys} of the vocabularies a store keeps as files
    (every table vocabulary; hashed fields have none), each path also recorded as
    ``"file"`` in its field's ``vocab_meta`` entry."""
    files = {}
    for name, vocab in vocabs.items():
      if not vocab.buckets and vocab.keys is not None:
        files[self.vocab_file(name)] = vocab.keys
        vocab_meta[name]["file"] = self.vocab_file(name)
    return files

  def encoder(self, fmt, vocabs: dict[str, Vocab], moments: tuple[np.ndarray, ...],
              options: Options) -> Encoder:
    """The Encoder of these fields of ``fmt``, ``moments`` being ``Moments.result()``
    (a missing dense value takes the training mean where ``options.values`` says so)."""
    mean, std, constant = moments
    encoder = Encoder(self.sparse_names, self.single_lists, self.multi_names,
                      self.multi_len, vocabs, mean, std, constant=constant,
                      **column_roles(fmt))
    if options.values.missing_dense == "default":
      encoder.fill = mean
    if options.dense_transform == "none":
      encoder.mean, encoder.std = np.zeros_like(mean), np.ones_like(std)
      encoder.constant = None
    return encoder


def store_facts(fmt, options: Options, policy: str, dropped: dict[str, int],
                sources: list[dict], vocab_meta: dict, encoder: Encoder,
                truncated: dict[str, int]) -> dict:
  """What meta.json records of a build beside its layout: the format, the policy, the
  inputs (``sources``: path, split, blake3, rows, header), the vocabularies, the dense
  statistics, the truncated rows and the options."""
  return {
      "format": fmt.name,
      "preprocess_version": PREPROCESS_VERSION,
      "task_relation": fmt.task_relation,
      "tasks": fmt.tasks,
      "entire_space_policy": policy,
      "splits": {s: {"dropped_conversion_without_click": dropped[s]} for s in SPLIT_ID},
      "sources": sources,
      "vocab": vocab_meta,
      "dense_stats": {"mean": encoder.mean.tolist(), "std": encoder.std.tolist(),
                      "transform": options.dense_transform,
                      **({} if encoder.fill is None else {"fill": encoder.fill.tolist()})},
      "dense_constant": [n for n, c in zip(fmt.dense_names, encoder.zeroed()) if c],
      "multi_truncated_rows": truncated,
      "options": {k: (list(v) if isinstance(v, tuple) else v)
                  for k, v in dataclasses.asdict(options).items()},
  }
