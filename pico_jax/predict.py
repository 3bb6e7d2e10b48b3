"""Scoring raw log files with a trained run: one output row per input row.

  python launch/predict.py --workdir=RUN --checkpoint=best --input=raw.csv[,more.csv] \
      --format=aliexpress --output=preds.csv
  python launch/predict.py --workdir=RUN --artifact=EXPORTED_DIR --input=raw.csv \
      --output=preds.csv

Raw rows of any format, ``table`` (CSV or Parquet) included, are read
(``Format.stream``), parsed (``Format.parse_block``) and encoded (``Encoder.encode``,
with its checks) by the preprocessing code, with the vocabularies and dense transform
saved in the run's training store, so a row scores exactly as it would from a store.
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
from pico_jax.ingest.encode import Encoder

OUTPUTS = ("p_ctr", "p_cvr", "p_ctcvr")


def checkpoint_scorer(workdir: str, which: str):
  """(score(columns) -> predictions, store path) of the run's checkpoint ``which``.

  ``score`` takes the model inputs of N rows (numpy, batch keys) and returns float32
  [N] arrays, computed as ``launch/evaluate.py`` computes them:
  ``Trainer.predict_columns`` of the run rebuilt by ``restore`` (its compiled
  ``eval_step``, its mesh over every local device, fixed-size padded batches). One
  process.
  """
  from pico_jax.train.restore import restore
  trainer = restore(workdir, which)

  def score(columns):
    out = trainer.predict_columns(B.features(columns))
    return {k: out[k] for k in OUTPUTS}
  return score, trainer.config.data.path


def artifact_scorer(artifact: str, batch_size: int):
  """(score, store path) of an exported serving artifact; every call runs fixed-size
  batches (the last padded with row 0), so the artifact compiles once. Raises
  DataError naming the manifest when it names no training store."""
  from pico_jax import export
  predict = export.load(artifact)
  names = [i["name"] for i in predict.manifest["inputs"]]
  config = predict.manifest.get("config") or {}
  path = config.get("data", {}).get("path")
  if not path:
    raise DataError("names no training store (config.data.path), whose vocabularies "
                    "encode the raw rows; export the run with its config",
                    path=os.path.join(artifact, export.MANIFEST_FILE))

  def score(columns):
    n = len(next(iter(columns.values())))
    out = {k: [] for k in OUTPUTS}
    for start in range(0, n, batch_size):
      rows = np.arange(start, start + batch_size)
      rows = np.where(rows < n, rows, 0)
      got = predict({k: columns[k][rows] for k in names})
      for k in OUTPUTS:
        out[k].append(got[k][:min(batch_size, n - start)])
    return {k: np.concatenate(v) for k, v in out.items()}
  return score, path


def _id_column(ids: np.ndarray) -> pa.Array:
  """The rows' id column for the output: int64 as is, bytes decoded (written quoted)."""
  if ids.dtype.kind == "S":
    return pa.array([format_contract.decode(i) for i in ids.tolist()], pa.string())
  return pa.array(ids)


def predict_files(score, store_path: str, inputs, output: str, *, fmt_name=None,
                  chunk_rows: int = blocks.CHUNK_ROWS, progress: bool = False,
                  log=print) -> dict:
  """Scores every row of ``inputs`` into the CSV ``output``.

  Returns a summary: ``rows``, ``id0`` (per field: rows whose id is 0), ``metrics``
  (when every input has labels; else None), ``rows_per_s``.
  Raises DataError (bad rows: file, line, column; ``fmt_name`` not the store's
  format); ``output`` is then not written.
  """
  encoder, fmt, meta = Encoder.from_store(store_path)
  if fmt_name and fmt_name != fmt.name:
    raise DataError(f"--format {fmt_name}: the run's store was built from format "
                    f"{fmt.name} ({store_path}); leave --format out or give {fmt.name}")
  layouts = [fmt.open_input(p, labels_optional=True) for p in inputs]
  fields = encoder.sparse_names + encoder.multi_names
  id0 = dict.fromkeys(fields, 0)
  labeled = all(layout.labels for layout in layouts)
  kept = {k: [] for k in (*OUTPUTS, B.CLICK, B.CONVERSION, B.GROUP)}
  start, rows = time.perf_counter(), 0
  out_dir = os.path.dirname(os.path.abspath(output))
  bar = blocks.Progress(sum(fmt.input_bytes(p) for p in inputs), "predict", "B", progress)
  names = ((fmt.id_name,) if fmt.id_name else ()) + OUTPUTS
  with tempfile.NamedTemporaryFile("wb", dir=out_dir, delete=False,
                                   prefix=f".{os.path.basename(output)}.tmp-") as f:
    try:
      f.write((",".join(names) + "\n").encode())
      for path, layout in zip(inputs, layouts):
        read = file_rows = 0
        for block, data in fmt.stream(path, layout, chunk_rows):
          if block is None:  # progress by bytes read: the ETA needs no line count.
            bar.update(0, data - read)
            read = data
            continue
          chunk = fmt.parse_block(block.path, data, block.first_line, layout,
                                  block.num_lines)
          cols, _ = encoder.encode(chunk, block.path)  # preprocessing's checks, the same.
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
                       meta.get("task_relation"), log)
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
