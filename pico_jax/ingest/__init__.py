"""Ingest: raw files -> the columnar store that training reads (``pico_jax.data.store``).

``preprocess.build_store`` is the entry point (``launch/preprocess.py`` its command
line), ``store_from_table`` the same build from a table in memory (a pyarrow Table or a
pandas DataFrame); ``pico_jax.predict`` scores raw files through the same formats and
encoder.
The modules:

  formats          the raw formats by name; each format lives in ``numeric_csv`` (every
                   column a number), ``text_formats`` (Census lines, Ali-CCP
                   ``field:feat`` lines) or ``table`` (users' CSV or Parquet tables)
  format_contract  the ``Format`` contract: a block of lines -> a ``Chunk`` of rows
  table_columns    format ``table``'s Arrow columns -> a ``Chunk``'s arrays
  numeric_parse    the compiled CSV parser behind the numeric formats
  raw_files        files: open (plain or gzip), scan, cut into blocks, BLAKE3 digest
  splits           which split every row goes to, decided before any statistic
  passes           where a line becomes a row (pass 1: parse, check, count) and a row a
                   store row (pass 2: encode, write)
  blocks           the workers (threads or processes) that run the passes' blocks
  spill            where parsed blocks wait between the passes (memory, or files)
  vocab            vocabularies: raw categorical values -> field-local ids
  moments          the dense columns' mean and std, stable for every finite input
  encode           ``Encoder``: parsed rows -> the store's (and the model's) columns
  store_writer     the store's preallocated, memory-mapped columns and its commit
  compiled         the Numba loops the passes and the encoder share
  layout           the store's layout once pass 1 has counted: fields, vocabularies,
                   row positions, meta.json's facts (both builds share it)
  preprocess       ``build_store``: the scan, the two passes and the store, in order
  distributed      the build's steps per input file and per plan, for a distributed engine
  beam_pipeline    those steps as an Apache Beam pipeline (the optional [beam] extra)
  memory           ``store_from_table``: ``build_store`` over tables in memory
"""

from pico_jax.ingest.memory import store_from_table

__all__ = ["store_from_table"]
