"""Ingest: raw files -> the columnar store that training reads (``pico_jax.data.store``).

``preprocess.build_store`` is the entry point (``launch/preprocess.py`` its command
line). ``formats`` names the raw formats (``numeric_csv``, ``text_formats``), ``readers``
cuts files into blocks of lines, ``blocks`` runs the two passes over them (parse and
count, then encode and write), ``vocab``, ``encode`` and ``splits`` hold the
vocabularies, the column encoding and the split rules, and ``compiled`` the Numba
loops the passes share.
"""
