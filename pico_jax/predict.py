"""Scoring raw log files with a trained run: one output row per input row.

  python launch/predict.py --workdir=RUN --checkpoint=best --input=raw.csv[,more.csv] \
      --format=aliexpress --output=preds.csv
  python launch/predict.py --artifact=EXPORTED_DIR --input=raw.csv --output=preds.csv

Raw rows of any format, ``table`` (CSV or Parquet) included, are read
(``Format.stream``), parsed (``Format.parse_block``) and encoded (``Encoder.encode``,
with its checks) by the preprocessing code (``serving.encoding``), with the
vocabularies and dense transform of the run's training store (a checkpoint) or the
copy an artifact holds, so a row scores exactly as it would from a store.
Values the store never kept (unseen, rare or missing) map to their field's id 0; how
many rows did, per field, is printed. The model is the run's checkpoint
(``--checkpoint``, scored in batches over every local device) or an exported serving
artifact (``--artifact``, see ``pico_jax/export.py``).

Output: a CSV with the format's id column (search_id for aliexpress, the sample id
for aliccp_raw, quoted, table's declared id; none for the others), p_ctr, p_cvr and
p_ctcvr (float32, in the shortest decimals that read back to the same value), in
input order. The label columns are optional in the inputs of the numeric CSV formats
and of table; when the inputs have them, the metrics of
``pico_jax.metrics.task_metrics`` are printed as JSON. A bad row stops the run with
its file, line and column, and nothing is left at --output.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pico_jax import batch as B
from pico_jax.data.errors import DataError
from pico_jax.ingest import blocks, format_contract
from pico_jax.serving.encoding import Encoding

OUTPUTS = ("p_ctr", "p_cvr", "p_ctcvr")


def checkpoint_scorer(workdir: str, which: str | None = None):
  """(score(columns) -> predictions, encoding) of the run's checkpoint ``which``
  (``train.restore``'s choices; None: its default, the best step where the run
  recorded one) and its training store. Restoring refuses a store whose data differ
  from those the checkpoint was trained on (``CheckpointMismatchError``), so rows are
  never encoded with a vocabulary the model did not learn.

  ``score`` takes the model inputs of N rows (numpy, batch keys) and returns float32
  [N] arrays, computed as ``launch/evaluate.py`` computes them:
  ``Trainer.predict_columns`` of the run rebuilt by ``restore`` (its compiled
  ``eval_step``, its mesh over every local device, fixed-size padded batches). One
  process.
  """
  from pico_jax.train.restore import DEFAULT, restore
  trainer = restore(workdir, which or DEFAULT)

  def score(columns):
    out = trainer.predict_columns(B.features(columns))
    return {k: out[k] for k in OUTPUTS}
  return score, Encoding.from_store(trainer.config.data.path)


def artifact_scorer(artifact: str, batch_size: int):
  """(score, encoding) of an exported serving artifact: its own feature encoding, and
  fixed-size batches (``Artifact.predict_columns``). Raises DataError naming the
  file of a damaged artifact, or the manifest of one without an encoding."""
  from pico_jax import export
  loaded = export.load(artifact)
  encoding = loaded.raw_encoding()
  return (lambda columns: loaded.predict_columns(columns, batch_size)), encoding


def _id_column(ids: np.ndarray) -> pa.Array:
  """The rows' id column for the output: int64 as is, bytes decoded (written quoted)."""
  if ids.dtype.kind == "S":
    return pa.array([format_contract.decode(i) for i in ids.tolist()], pa.string())
  return pa.array(ids)


def predict_files(score, encoding: Encoding, inputs, output: str, *, fmt_name=None,
                  chunk_rows: int = blocks.CHUNK_ROWS, progress: bool = False,
                  log=print) -> dict:
  """Scores every row of ``inputs`` into the CSV ``output``.

  Returns a summary: ``rows``, ``id0`` (per field: rows whose id is 0), ``metrics``
  (when every input has labels; else None), ``rows_per_s``.
  ``encoding`` (``serving.encoding.Encoding``: the training store's or an artifact's)
  reads and encodes the rows. Raises DataError (bad rows: file, line, column;
  ``fmt_name`` not the encoding's format); ``output`` is then not written.
  """
  encoder, fmt = encoding.encoder, encoding.fmt
  if fmt_name and fmt_name != fmt.name:
    raise DataError(f"--format {fmt_name}: the model's inputs are encoded from format "
                    f"{fmt.name}; leave --format out or give {fmt.name}")
  opened = encoding.open(inputs)
  fields = encoder.sparse_names + encoder.multi_names
  id0 = dict.fromkeys(fields, 0)
  labeled = all(layout.labels for _, layout in opened)
  kept = {k: [] for k in (*OUTPUTS, B.CLICK, B.CONVERSION, B.GROUP)}
  start, rows = time.perf_counter(), 0
  out_dir = os.path.dirname(os.path.abspath(output))
  bar = blocks.Progress(sum(fmt.input_bytes(p) for p, _ in opened), "predict", "B",
                        progress)
  names = ((fmt.id_name,) if fmt.id_name else ()) + OUTPUTS
  with tempfile.NamedTemporaryFile("wb", dir=out_dir, delete=False,
                                   prefix=f".{os.path.basename(output)}.tmp-") as f:
    try:
      f.write((",".join(names) + "\n").encode())
      for path, layout in opened:
        read = file_rows = 0
        for chunk, cols in encoding.read(path, layout, chunk_rows):
          if chunk is None:  # progress by bytes read: the ETA needs no line count.
            bar.update(0, cols - read)
            read = cols
            continue
          for j, name in enumerate(encoder.sparse_names):
            id0[name] += int(np.sum(cols[B.SPARSE][:, j] == 0))
          for g, name in enumerate(encoder.multi_names):  # values, not rows, here.
            id0[name] += int(np.sum(cols[B.MULTI_MASK][:, g] & (cols[B.MULTI][:, g] == 0)))
          preds = score(cols)
          # Shortest decimals that read back to the same float32 (pyarrow's writer,
          # a tenth of the time of formatting the rows in Python).
          columns = [pa.array(np.asarray(preds[k], np.float32)) for k in OUTPUTS]
          if fmt.id_name:
            columns.insert(0, _id_column(chunk.ids))
          pacsv.write_csv(pa.table(columns, names=names), f,
                          pacsv.WriteOptions(include_header=False))
          if labeled:  # kept only for the metrics: unlabeled input streams through.
            for k in OUTPUTS:
              kept[k].append(preds[k])
            kept[B.CLICK].append(chunk.click)
            kept[B.CONVERSION].append(chunk.conversion)
            if chunk.group is not None:
              kept[B.GROUP].append(chunk.group)
          rows += len(chunk)
          file_rows += len(chunk)
          bar.update(len(chunk), 0)
        if not file_rows:  # as preprocessing: a file without data rows is an error.
          raise format_contract.no_rows(path)
      f.close()
      os.replace(f.name, output)
    except BaseException:
      f.close()
      os.remove(f.name)
      raise
    finally:
      bar.close()
  elapsed = time.perf_counter() - start
  metrics = None
  if labeled and rows:
    metrics = _metrics({k: np.concatenate(v) for k, v in kept.items() if v},
                       encoding.task_relation, log)
  return {"rows": rows, "id0": id0, "metrics": metrics,
          "rows_per_s": rows / max(elapsed, 1e-9)}


def _metrics(kept, task_relation, log) -> dict:
  """``task_metrics`` of the scored rows. A row with conversion but no click is
  excluded (and counted) where the conversion is post-click: CVR is scored on clicked
  rows only."""
  from pico_jax import metrics
  info = {"task_relation": task_relation}
  bad = (kept[B.CONVERSION] == 1) & (kept[B.CLICK] == 0)
  if bad.any() and task_relation != "independent":
    log(f"metrics: {int(bad.sum())} rows with conversion = 1 and click = 0 excluded")
    kept = {k: v[~bad] for k, v in kept.items()}
  preds = {k: kept[k] for k in OUTPUTS}
  return metrics.task_metrics(preds, kept, info)
