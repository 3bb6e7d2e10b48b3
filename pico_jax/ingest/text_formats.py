"""Text formats: UCI Census-Income (KDD) raw lines and Ali-CCP ``field:feat`` lines.

Both keep their labels in the middle or at the start of a line, so their label columns
are never optional. A block is split into tokens with whole-block bytes operations and
checked with whole-array numpy; the slow per-token search that finds the exact place
of a problem runs only after a check has failed.
"""

from __future__ import annotations

import numpy as np

from pico_jax.data.errors import DataError
from pico_jax.ingest.format_contract import (Chunk, Format, Layout, check_empty, echo,
                                            is_number, select_features, split_checked)

# --------------------------------------------------------------------------- census

CENSUS_COLUMNS = (
    "age", "class of worker", "detailed industry recode", "detailed occupation recode",
    "education", "wage per hour", "enroll in edu inst last wk", "marital stat",
    "major industry code", "major occupation code", "race", "hispanic origin", "sex",
    "member of a labor union", "reason for unemployment",
    "full or part time employment stat", "capital gains", "capital losses",
    "dividends from stocks", "tax filer stat", "region of previous residence",
    "state of previous residence", "detailed household and family stat",
    "detailed household summary in household", "instance weight",
    "migration code-change in msa", "migration code-change in reg",
    "migration code-move within reg", "live in this house 1 year ago",
    "migration prev res in sunbelt", "num persons worked for employer",
    "family members under 18", "country of birth father", "country of birth mother",
    "country of birth self", "citizenship", "own business or self employed",
    "fill inc questionnaire for veteran's admin", "veterans benefits",
    "weeks worked in year", "year", "income")
CENSUS_CONTINUOUS = (0, 5, 16, 17, 18, 30, 39)
CENSUS_DROPPED = (7, 24, 41)  # marital stat (task), instance weight, income (task).
_INCOME_HIGH, _INCOME_LOW = b"50000+.", b"- 50000."
_NEVER_MARRIED = b"Never married"


class CensusFormat(Format):
  """UCI Census-Income (KDD) raw lines, fields separated by ', ' (values stripped).

  The two tasks of the MMoE paper: income > 50K ("click" role) and marital stat ==
  "Never married" ("conversion" role); fields 7, 24 and 41 are not features; the continuous
  fields 0, 5, 16, 17, 18, 30, 39 are dense, every other field categorical (raw strings,
  '?' being one more value). The two tasks are independent, so a conversion without a
  click is ordinary data here (policy "keep").
  """
  name = "census"
  default_policy = "keep"
  task_relation = "independent"
  tasks = {"click": "income > 50K", "conversion": "marital stat == Never married"}
  conversion_column = (8, "marital stat")
  columns = CENSUS_COLUMNS  # without DeepCTR's leading index.

  def __init__(self, sparse=None, dense=None):
    cols = CENSUS_COLUMNS
    default_dense = tuple(cols[i] for i in CENSUS_CONTINUOUS)
    default_sparse = tuple(c for i, c in enumerate(cols)
                           if i not in CENSUS_CONTINUOUS and i not in CENSUS_DROPPED)
    labels = {"marital stat": "conversion (never married)", "income": "click (income)"}
    self.sparse_names, self.dense_names = select_features(
        self.name, cols, labels, default_sparse, default_dense, sparse, dense)
    self._sparse = [cols.index(c) for c in self.sparse_names]
    self._dense = [cols.index(c) for c in self.dense_names]

  def inspect(self, path, first_line, labels_optional=False):
    tokens = first_line.rstrip(b"\r\n").split(b",")
    if len(tokens) == len(CENSUS_COLUMNS) + 1 and tokens[0].strip().isdigit():
      return Layout(index_column=True)  # DeepCTR's sample: a leading row index.
    if len(tokens) != len(CENSUS_COLUMNS) or tokens[-1].strip() not in (_INCOME_HIGH,
                                                                         _INCOME_LOW):
      split_checked(path, 1, first_line, b",", len(CENSUS_COLUMNS))
      raise DataError("header does not match format census: the file has no header and "
                      f"its last column is the income label ({_INCOME_LOW.decode()!r} or "
                      f"{_INCOME_HIGH.decode()!r}), found {echo(tokens[-1].strip())}",
                      path=path, line=1, column=len(CENSUS_COLUMNS), column_name="income")
    return Layout()

  def parse(self, path, lines, first_line_no, layout):
    n = len(lines)
    offset = int(layout.index_column)
    width = len(CENSUS_COLUMNS) + offset
    tokens = b",".join([line.rstrip(b"\r\n") for line in lines]).split(b",")
    if len(tokens) != n * width:
      for i, line in enumerate(lines):
        split_checked(path, first_line_no + i, line, b",", width)
    line_nos = np.arange(first_line_no, first_line_no + n, dtype=np.int64)
    # One array per column: far narrower fixed-width strings than one table.
    column = lambda j: np.strings.strip(np.array(tokens[j + offset::width], np.bytes_))
    used = sorted({7, 41, *self._sparse, *self._dense})
    table = {j: column(j) for j in used}

    def fail(i, j, what):
      raise DataError(f"{what}, got {echo(table[j][i])}", path=path,
                      line=int(line_nos[i]), column=j + 1 + offset,
                      column_name=CENSUS_COLUMNS[j])

    income = table[41]
    bad = np.flatnonzero((income != _INCOME_HIGH) & (income != _INCOME_LOW))
    if len(bad):
      fail(bad[0], 41, f"income label must be {_INCOME_LOW.decode()!r} or "
           f"{_INCOME_HIGH.decode()!r}")
    for j in used:
      empty = np.flatnonzero(table[j] == b"")
      if len(empty):
        fail(empty[0], j, "empty value ('?' marks a missing one)")
    dense = np.zeros((n, 0))
    for j in self._dense:
      try:
        values = table[j].astype(np.float64)
      except ValueError:
        for i in range(n):
          try:
            table[j][i:i + 1].astype(np.float64)
          except ValueError:
            fail(i, j, "non-numeric value in a continuous column")
        raise
      bad = np.flatnonzero(~np.isfinite(values))
      if len(bad):
        fail(bad[0], j, "NaN/inf value")
      dense = np.concatenate([dense, values[:, None]], axis=1)
    return Chunk(lines=line_nos, click=(income == _INCOME_HIGH).astype(np.float32),
                 conversion=(table[7] == _NEVER_MARRIED).astype(np.float32),
                 sparse=[table[j] for j in self._sparse],
                 dense=dense if self._dense else None, lists={}, group=None)


# ------------------------------------------------------------------ Ali-CCP raw lines

ALICCP_RAW_FIELDS = ("101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124",
                     "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
                     "508", "509", "702", "853", "301")


class AliccpRawFormat(Format):
  """``sample_id,click,purchase,field:feat,field:feat,...`` lines (PaddleRec ESMM).

  Feature ids are non-negative global integers; a field may occur several times in a
  line (multi-valued) or not at all (missing: id 0). The store builder decides which
  fields are multi-valued from the data. The group key is the user id (field 101).
  """
  name = "aliccp_raw"
  tasks = {"click": "click", "conversion": "purchase"}
  conversion_column = (3, "purchase")
  list_names = ALICCP_RAW_FIELDS
  group_name = "101"
  id_name = "id"

  def __init__(self, sparse=None, dense=None):
    if dense:
      raise DataError("format aliccp_raw has no dense columns (--dense)")
    if sparse is not None:
      for name in sparse:
        if name in ("click", "purchase"):
          raise DataError("is a label of format aliccp_raw; labels are never features "
                          "(remove it from --sparse)", column=2 + (name == "purchase"),
                          column_name=name)
        if name not in ALICCP_RAW_FIELDS:
          raise DataError(f"format aliccp_raw has no field {name!r} (given in --sparse); "
                          f"its fields are {list(ALICCP_RAW_FIELDS)}")
      self.list_names = tuple(f for f in ALICCP_RAW_FIELDS if f in sparse)
    self._field_index = {f.encode(): i for i, f in enumerate(ALICCP_RAW_FIELDS)}

  def inspect(self, path, first_line, labels_optional=False):
    tokens = first_line.rstrip(b"\r\n").split(b",")
    if len(tokens) < 4 or not is_number(tokens[1]) or b":" not in tokens[3]:
      raise DataError("header does not match format aliccp_raw: expected "
                      "'id,click,purchase,field:feat,...' data lines without a header, "
                      f"found {echo(first_line[:60])}", path=path, line=1)
    return Layout()

  def parse(self, path, lines, first_line_no, layout):
    n = len(lines)
    ids, heads, rests = [], [], []
    for i, line in enumerate(lines):
      parts = line.rstrip(b"\r\n").split(b",", 3)
      if len(parts) < 4:
        check_empty(path, first_line_no + i, line)
        raise DataError(f"expected 'id,click,purchase,field:feat,...', found "
                        f"{len(parts)} columns", path=path, line=first_line_no + i,
                        column=len(parts) + 1)
      ids.append(parts[0])
      heads.append(parts[1:3])
      rests.append(parts[3])
    line_nos = np.arange(first_line_no, first_line_no + n, dtype=np.int64)
    labels = np.array(heads, dtype=np.bytes_)
    try:
      label_values = labels.astype(np.float64)
    except ValueError:
      label_values = None
    if label_values is None or np.any((label_values != 0) & (label_values != 1)):
      for i in range(n):
        for j in range(2):
          try:
            ok = float(labels[i:i + 1, j].astype(np.float64)[0]) in (0.0, 1.0)
          except ValueError:
            ok = False
          if not ok:
            raise DataError(f"label must be 0 or 1, got {echo(labels[i, j])}",
                            path=path, line=int(line_nos[i]), column=j + 2,
                            column_name=("click", "purchase")[j])

    counts = np.array([r.count(b",") + 1 for r in rests], np.int64)
    tokens = np.array(b",".join(rests).split(b","), dtype=np.bytes_)
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    columns = np.arange(len(tokens), dtype=np.int64) - np.repeat(
        np.cumsum(counts) - counts, counts) + 4
    fields, sep, feats = np.strings.partition(tokens, b":")

    def fail(t, what, token=None):
      token = tokens[t] if token is None else token
      raise DataError(f"{what}, got {echo(token)}", path=path,
                      line=int(line_nos[rows[t]]), column=int(columns[t]))

    bad = np.flatnonzero(sep != b":")
    if len(bad):
      fail(bad[0], "expected field:feat")
    uniq, inverse = np.unique(fields, return_inverse=True)
    index = np.array([self._field_index.get(bytes(u), -1) for u in uniq], np.int64)
    field_of = index[inverse.reshape(-1)]
    bad = np.flatnonzero(field_of < 0)
    if len(bad):
      fail(bad[0], f"unknown field (the fields are {list(ALICCP_RAW_FIELDS)})",
           fields[bad[0]])
    try:
      values = feats.astype(np.int64)
    except ValueError:
      values = None
    if values is None or np.any(values < 0):
      for t in range(len(feats)):
        try:
          ok = int(feats[t:t + 1].astype(np.int64)[0]) >= 0
        except ValueError:
          ok = False
        if not ok:
          fail(t, "feature ids must be non-negative integers", feats[t])
    order = np.argsort(field_of, kind="stable")  # by field, line order within a field.
    starts = np.searchsorted(field_of[order], np.arange(len(ALICCP_RAW_FIELDS) + 1))
    lists = {}
    for k, name in enumerate(ALICCP_RAW_FIELDS):
      if name in self.list_names:
        sel = order[starts[k]:starts[k + 1]]
        lists[name] = (rows[sel], values[sel], columns[sel])
    user = lists.get("101") or (rows[order[starts[0]:starts[1]]],
                                values[order[starts[0]:starts[1]]], None)
    group = np.full(n, -1, np.int64)
    group[user[0]] = user[1]
    return Chunk(lines=line_nos, click=label_values[:, 0].astype(np.float32),
                 conversion=label_values[:, 1].astype(np.float32), sparse=[], dense=None,
                 lists=lists, group=group, ids=np.array(ids, dtype=np.bytes_))


