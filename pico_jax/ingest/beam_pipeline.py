"""The store built by an Apache Beam pipeline: the steps of ``distributed`` on any runner.

  inputs -> scan (per file) -> split plan (once) -> pass 1 (per file) -> vocabularies
  (combined per field), dense moments (merged in block order), multiplicities ->
  encoder (once) and placement (once) -> pass 2 (per file: shards) -> meta.json (once)

The DirectRunner runs it in this process (what the tests and a laptop use); Dataflow,
Flink and Spark run the same graph (docs/data.md gives their commands). The unit of
parallel work is an input file: give a large log as many files. apache-beam is an
optional dependency (``pip install -e .[beam]``); nothing else imports this module.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Sequence

import numpy as np

from pico_jax.data import store
from pico_jax.ingest import distributed, preprocess, shard_writer
from pico_jax.ingest.vocab import Counter

# Beam's import warns, on the root logger, about Google Cloud client libraries that a
# build without BigQuery does not use.
_level = logging.getLogger().level
logging.getLogger().setLevel(logging.ERROR)
try:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
finally:
  logging.getLogger().setLevel(_level)


class _CountValues(beam.CombineFn):
  """One field's training counts: ``vocab.Counter`` as the accumulator, so any merge
  order gives the local build's (sorted distinct values, summed int64 counts)."""

  def create_accumulator(self):
    return Counter()

  def add_input(self, counter, uniques):
    counter.add_counts(*uniques)
    return counter

  def merge_accumulators(self, counters):
    merged = Counter()
    for counter in counters:
      keys, counts = counter.result()
      if keys is not None:
        merged.add_counts(keys, counts)
    return merged

  def extract_output(self, counter):
    return counter.result()


class _Count(beam.DoFn):
  """Pass 1 of a unit: main output its dropped rows; tagged outputs the training counts
  per field, each block's dense moments (by block number) and the multiplicities."""

  def __init__(self, job: distributed.Job):
    self.job = job

  def process(self, planned, first_blocks):
    unit, split = planned
    fmt = self.job.format()
    names = fmt.sparse_names + fmt.list_names
    stats = distributed.count_unit(self.job, unit, split)
    for k, block in enumerate(stats):
      for name, (keys, counts) in zip(names, block.uniques, strict=True):
        if len(keys):
          yield beam.pvalue.TaggedOutput("counts", (name, (keys, counts)))
      if block.moments is not None:
        yield beam.pvalue.TaggedOutput("moments", (first_blocks[unit.index] + k,
                                                   block.moments))
      for name, m in block.max_mult.items():
        yield beam.pvalue.TaggedOutput("mult", (name, m))
    yield unit.index, np.concatenate([b.dropped for b in stats] or [np.zeros(0, bool)])


def _graph(p, job: distributed.Job, units, inputs, root: str, output: str):
  """The pipeline's transforms, from the units to the committed store."""
  scans = (p | "Units" >> beam.Create(units)
           | "Scan" >> beam.Map(lambda unit: distributed.scan(job, unit)))
  all_scans = beam.pvalue.AsList(scans)
  first_blocks = (p | "One" >> beam.Create([None])
                  | "FirstBlocks" >> beam.Map(lambda _, s: distributed.first_blocks(s),
                                              all_scans))
  counted = (scans | "ScanList" >> beam.combiners.ToList()
             | "SplitPlan" >> beam.FlatMap(lambda s: distributed.split_plan(job, s))
             | "SpreadPlan" >> beam.Reshuffle()
             | "Count" >> beam.ParDo(_Count(job), beam.pvalue.AsSingleton(first_blocks))
             .with_outputs("counts", "moments", "mult", main="dropped"))
  counts = counted.counts | "Vocabularies" >> beam.CombinePerKey(_CountValues())
  moments = counted.moments | "Moments" >> beam.combiners.ToList()
  mult = counted.mult | "Multiplicity" >> beam.CombinePerKey(max)
  encoding = (p | "Start" >> beam.Create([None])
              | "Encoder" >> beam.Map(
                  lambda _, c, m, x: distributed.encoding(job, dict(c), m, dict(x)),
                  beam.pvalue.AsList(counts), beam.pvalue.AsSingleton(moments),
                  beam.pvalue.AsList(mult)))
  placed = (counted.dropped | "Dropped" >> beam.combiners.ToList()
            | "Place" >> beam.Map(lambda d, s: distributed.placement(job, s, dict(d),
                                                                     inputs), all_scans))
  written = (placed | "Units2" >> beam.FlatMap(lambda placement: placement[1])
             | "SpreadUnits" >> beam.Reshuffle()
             | "Write" >> beam.Map(
                 lambda u, firsts, enc: distributed.write_unit(
                     job, u[0], firsts[u[0].index], enc, u[1], u[2], root),
                 beam.pvalue.AsSingleton(first_blocks), beam.pvalue.AsSingleton(encoding)))
  _ = (p | "End" >> beam.Create([None])
       | "Finish" >> beam.Map(
           lambda _, s, enc, place, w: distributed.finish(job, s, enc, place[0], w, root,
                                                          output),
           all_scans, beam.pvalue.AsSingleton(encoding), beam.pvalue.AsSingleton(placed),
           beam.pvalue.AsList(written)))


@contextlib.contextmanager
def _quiet_runner():
  """The runner logs a failed step's traceback before raising it; the caller reports
  the error itself, in one line."""
  logger = logging.getLogger("apache_beam.runners.common")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def _original(error: BaseException) -> BaseException:
  """The error a step raised, without the "[while running 'STEP']" the runner adds."""
  while "[while running" in str(error) and type(error.__context__) is type(error):
    error = error.__context__
  return error


def _runner(name: str):
  """The runner ``name``; for DirectRunner, Beam's in-process ``FnApiRunner``.

  Beam's own DirectRunner first tries Prism (``PrismRunner``, which downloads its
  binary) and falls back to the FnApiRunner; the try leaves three empty directories in
  the system temporary directory per run (Beam's job server and artifact staging call
  ``tempfile.mkdtemp()`` with no pipeline option for where: --temp_location and
  --staging_location do not move them). Setting ``tempfile.tempdir`` would, but for the
  whole process, a notebook that imports pico_jax included, and not thread-safely.
  Prism stays available as ``--runner=PrismRunner``."""
  if name == "DirectRunner":
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    return FnApiRunner()
  return name


def build_store(format_name: str, inputs: Sequence[str], output: str, *,
                options: preprocess.Options = preprocess.Options(), overwrite: bool = False,
                runner: str = "DirectRunner", pipeline_args: Sequence[str] = (),
                log: Callable[[str], None] = lambda msg: None) -> dict:
  """``preprocess.build_store``'s store, sharded, built by a Beam pipeline.

  Args:
    format_name, inputs, options, overwrite: as for ``preprocess.build_store``;
      inputs may be globs and URIs (``s3://``, ``gs://``). The options of local
      workers (``workers``, ``processes``, ``spill_memory``) are the runner's concern.
    output: the store's location, a local directory or a URI.
    runner: one of ``distributed.RUNNERS``.
    pipeline_args: the runner's own options (``--project=...``, ``--region=...``).

  Returns:
    The store's meta dict (also ``output/meta.json``). Raises DataError for bad input
    (naming file, line and column); nothing is left at ``output`` then, and an
    existing store there stays as it was.
  """
  if runner not in distributed.RUNNERS:
    raise ValueError(f"runner {runner!r}: expected one of {list(distributed.RUNNERS)}")
  job = distributed.Job(format_name, options)
  job.format()  # a bad option fails before the run.
  units = distributed.units(inputs)
  log(f"{len(units)} input file(s); runner {runner}")
  root = shard_writer.open_root(output, overwrite, log)
  try:
    with _quiet_runner(), beam.Pipeline(runner=_runner(runner), options=PipelineOptions(
        list(pipeline_args))) as p:
      _graph(p, job, units, list(inputs), root, output)
  except Exception as e:
    shard_writer.abandon(root, output)
    raise _original(e) from None
  meta = store.verified_meta(output)
  log(f"wrote {output}: " + ", ".join(f"{s} {m['rows']:,}"
                                      for s, m in meta["splits"].items()))
  return meta
