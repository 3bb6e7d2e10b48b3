"""Ingest: raw files -> the columnar store that training reads (``pico_jax.data.store``).

``preprocess.build_store`` is the entry point (``launch/preprocess.py`` its command
line). ``formats`` names the raw formats (``numeric_csv``, ``text_formats``,
``table``); ``reading`` opens, scans, cuts and digests files; ``readers`` is the
contract of a format (a block of lines -> a ``Chunk`` of rows); ``passes`` holds the
two passes over the blocks (parse and count, then encode and write), ``blocks`` the
workers that run them; ``vocab``, ``moments``, ``encode`` and ``splits`` hold the
vocabularies, the dense statistics, the column encoding and the split rules;
``store_writer`` writes the store; ``compiled`` holds the Numba loops the passes share
and ``numeric_parse`` the compiled CSV parser.
"""
